//! The Python `ccxt` package the Binance compatibility checks run
//! (`tests/compat/*.py`): found, or installed with pip, once per test.

use std::path::PathBuf;
use std::process::Command;

/// The pip requirement the checks are written against.
pub const CCXT_REQUIREMENT: &str = "ccxt>=4.5,<5";

/// The interpreter: `$PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Makes `import <module>` work (`ccxt`, `ccxt.pro`): installs
/// [`CCXT_REQUIREMENT`] when it does not, and fails when that is impossible
/// (a compatibility claim that was not checked is not a pass).
pub fn ensure_ccxt(module: &str) {
    let import = format!("import {module}");
    let has = |py: &str| {
        Command::new(py)
            .args(["-c", &import])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has(&python()) {
        return;
    }
    eprintln!("ccxt is missing; installing {CCXT_REQUIREMENT}");
    let status = Command::new(python())
        .args(["-m", "pip", "install", "--quiet", CCXT_REQUIREMENT])
        .status()
        .expect("run pip");
    assert!(
        status.success() && has(&python()),
        "could not install {CCXT_REQUIREMENT}: run `{} -m pip install '{CCXT_REQUIREMENT}'`",
        python()
    );
}

/// `tests/compat/<name>` of the workspace.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests/compat")
        .join(name)
}
