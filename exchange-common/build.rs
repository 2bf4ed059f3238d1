//! Embeds `migrations/*.sql` (sorted by file name) into the crate so the
//! binary and `scripts/migrate.sh` apply the very same files.
use std::fmt::Write as _;

fn main() {
    // The directory of the crate being built, read when the script runs:
    // `env!` would bake in where the script was first compiled, and a
    // target directory copied from another checkout (a git worktree) would
    // then embed that checkout's migrations.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    let dir = std::path::Path::new(&manifest_dir).join("migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".sql"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut out = String::from("static MIGRATIONS: &[(&str, &str)] = &[\n");
    for name in &names {
        println!("cargo:rerun-if-changed={}", dir.join(name).display());
        let _ = writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            dir.join(name).display().to_string()
        );
    }
    out.push_str("];\n");
    let out_dir = std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into());
    let _ = std::fs::write(std::path::Path::new(&out_dir).join("migrations.rs"), out);
}
