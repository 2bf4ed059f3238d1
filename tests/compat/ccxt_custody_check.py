#!/usr/bin/env python3
"""Binance compatibility check, custody: the unmodified `ccxt` package's
`binance` class, pointed at our gateway (`/api/v3` and `/sapi/v1`), reads
the deposit address and deposits and withdraws, and reads real values.

Driven by exchange/tests/binance_ccxt_custody.rs, which starts the services
(withdrawal addresses cool down for 3 s), creates ETH on the `ethereum`
network (fee 0.001, minimum 0.01, auto-approved up to 1, 3 confirmations)
and ETH-USDT, a user with a read+trade+withdraw key (IP allowlist
127.0.0.1) and a read-only key, reports two transfers to the user's
deposit address (CREDITED_TX: 2.5 ETH, 3 of 3 confirmations, credited;
PENDING_TX: 1 ETH, 1 of 3, pending), and adds BOOK_ADDRESS to the user's withdrawal
address book (past its cooldown). Environment: EXCHANGE_URL, KEY/SECRET,
RO_KEY/RO_SECRET, USER_TOKEN (the user's v1 access token), USER_ID,
FINANCE_TOKEN and SUPPORT_TOKEN (operators), DEPOSIT_ADDRESS, BOOK_ADDRESS,
CREDITED_TX, PENDING_TX.

Exits 0 and prints "ALL CCXT CUSTODY CHECKS PASSED" when every check holds.
"""

import base64
import hashlib
import hmac
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal

import ccxt

URL = os.environ["EXCHANGE_URL"].rstrip("/")
DEPOSIT_ADDRESS = os.environ["DEPOSIT_ADDRESS"]
BOOK_ADDRESS = os.environ["BOOK_ADDRESS"]
USER_TOKEN = os.environ["USER_TOKEN"]
CREDITED_TX = os.environ["CREDITED_TX"]
PENDING_TX = os.environ["PENDING_TX"]
PAYOUT_TX = "0x" + "ab" * 32
SETTLE_SECS = 20.0
VERBOSE = os.environ.get("CCXT_VERBOSE") == "1"

checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def d(x):
    return Decimal(str(x))


def client(key, secret):
    ex = ccxt.binance(
        {
            "apiKey": key,
            "secret": secret,
            "enableRateLimit": False,
            "timeout": 20000,
            "verbose": VERBOSE,
            "options": {
                "fetchMarkets": {"types": ["spot"]},
                "fetchCurrencies": False,
                "fetchMargins": False,
                "adjustForTimeDifference": True,
            },
        }
    )
    ex.urls["api"]["public"] = URL + "/api/v3"
    ex.urls["api"]["private"] = URL + "/api/v3"
    ex.urls["api"]["sapi"] = URL + "/sapi/v1"
    return ex


def v1(method, path, token, body=None):
    """Our own API (what the user's browser and operators use)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(URL + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def totp(secret_b32, at=None):
    """RFC 6238: SHA-1, 6 digits, 30 s steps."""
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8), casefold=True)
    counter = int((time.time() if at is None else at) // 30)
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    code = (struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}"


def eventually(fn, what, timeout=SETTLE_SECS):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.1)
    check(False, f"{what} (last: {last!r})")


def expect_error(cls, fn, what, bn_code, code=None):
    """`fn` raises `cls` from Binance's error `bn_code`, whose msg names
    our `code` (each when given; ccxt shows only the msg of an error it
    classifies by its msg)."""
    try:
        fn()
    except cls as e:
        if bn_code is not None:
            check(f'"code":{bn_code},' in str(e), f"{what}: Binance code {bn_code} ({e})")
        if code is not None:
            check(code in str(e), f"{what}: our code {code} in the message")
        check(True, f"{what} raises {cls.__name__}")
        return
    except Exception as e:  # noqa: BLE001
        check(False, f"{what} raised {type(e).__name__} instead of {cls.__name__}: {e}")
    check(False, f"{what} raised nothing, expected {cls.__name__}")


def eth(ex):
    b = ex.fetch_balance()["ETH"]
    return d(b["free"]), d(b["used"]), d(b["total"])


def withdrawal(ex, wid, **params):
    found = [w for w in ex.fetch_withdrawals("ETH", params=params) if w["id"] == wid]
    return found[0] if len(found) == 1 else None


def main():
    ex = client(os.environ["KEY"], os.environ["SECRET"])
    ex.load_markets()
    check("ETH" in ex.currencies, "ccxt knows ETH (from ETH/USDT)")

    # ---- account flags: canWithdraw with the withdraw permission only
    acct = ex.private_get_account()
    check(acct["canWithdraw"] is True and acct["canDeposit"] is True and acct["canTrade"] is True,
          f"withdraw key: canWithdraw, canDeposit, canTrade ({acct['canWithdraw']}, {acct['canDeposit']}, {acct['canTrade']})")
    ro = client(os.environ["RO_KEY"], os.environ["RO_SECRET"])
    ro.load_markets()
    # A fresh client: ccxt turns -2015 into DDoSProtection once a key has
    # authenticated successfully before.
    expect_error(ccxt.AuthenticationError,
                 lambda: ro.withdraw("ETH", 0.1, BOOK_ADDRESS), "a read-only key withdraws", -2015)
    racct = ro.private_get_account()
    check(racct["canWithdraw"] is False and racct["canDeposit"] is True and racct["canTrade"] is False,
          f"read-only key: no canWithdraw, canDeposit ({racct['canWithdraw']}, {racct['canDeposit']})")

    # ---- deposit address: the one v1 gives
    addr = ex.fetch_deposit_address("ETH")
    check(addr["address"] == DEPOSIT_ADDRESS, f"fetch_deposit_address is the v1 address ({addr['address']})")
    check(addr["currency"] == "ETH" and addr["tag"] is None, f"currency ETH, no tag ({addr})")
    check(addr["info"]["coin"] == "ETH", "info.coin ETH")
    check(ro.fetch_deposit_address("ETH")["address"] == DEPOSIT_ADDRESS, "a read-only key reads it too")
    check(ex.fetch_deposit_address("ETH", {"network": "ethereum"})["address"] == DEPOSIT_ADDRESS,
          "network: ours, ethereum")
    expect_error(ccxt.BadRequest, lambda: ex.fetch_deposit_address("ETH", {"network": "BSC"}),
                 "another network", -4001, "NETWORK_MISMATCH")
    expect_error(ccxt.BadRequest, lambda: ex.sapi_get_capital_deposit_address({"coin": "NOPE"}),
                 "an unknown coin", -4018, "UNKNOWN_ASSET")

    # ---- deposits: the credited and the pending one
    deps = ex.fetch_deposits("ETH")
    by_tx = {x["txid"]: x for x in deps}
    check(sorted(by_tx) == sorted([CREDITED_TX, PENDING_TX]), f"two deposits ({sorted(by_tx)})")
    done, waiting = by_tx[CREDITED_TX], by_tx[PENDING_TX]
    check(d(done["amount"]) == d("2.5") and done["status"] == "ok" and done["currency"] == "ETH",
          f"credited: 2.5 ETH, ok ({done['amount']}, {done['status']})")
    check(done["type"] == "deposit" and done["address"] == DEPOSIT_ADDRESS and done["network"] == "ethereum",
          f"credited: a deposit to my address on ethereum ({done['type']}, {done['address']}, {done['network']})")
    check(done["info"]["confirmTimes"] == "3/3" and done["info"]["status"] == 1, f"3/3 confirmations, status 1 ({done['info']})")
    check(done["timestamp"] is not None and abs(done["timestamp"] - time.time() * 1000) < 600_000,
          f"insertTime is recent ({done['datetime']})")
    check(d(waiting["amount"]) == 1 and waiting["status"] == "pending" and waiting["info"]["confirmTimes"] == "1/3",
          f"pending: 1 ETH, 1/3 ({waiting['status']}, {waiting['info']['confirmTimes']})")
    only = ex.fetch_deposits("ETH", params={"status": 1})
    check([x["txid"] for x in only] == [CREDITED_TX], "status=1: only the credited one")
    check(ex.fetch_deposits("ETH", limit=1) and len(ex.fetch_deposits("ETH", limit=1)) == 1, "limit=1: one")
    future = int(time.time() * 1000) + 3_600_000
    check(ex.fetch_deposits("ETH", since=future) == [], "since an hour from now: none")
    check(ro.fetch_deposits("ETH") and len(ro.fetch_deposits("ETH")) == 2, "a read-only key reads them")

    free, used, total = eth(ex)
    check((free, used) == (d("2.5"), 0), f"2.5 ETH available, the pending deposit not ({free}, {used})")

    # ---- refusals hold nothing
    # (ccxt 4.5 has no class for -4035 or -4036: a plain ExchangeError.)
    expect_error(ccxt.ExchangeError,
                 lambda: ex.withdraw("ETH", 0.1, "0x" + "ab" * 20), "an address not in the book",
                 -4035, "ADDRESS_NOT_FOUND")
    expect_error(ccxt.BadRequest, lambda: ex.withdraw("ETH", 0.001, BOOK_ADDRESS), "below the minimum",
                 -4022, "AMOUNT_BELOW_MINIMUM")
    expect_error(ccxt.InsufficientFunds, lambda: ex.withdraw("ETH", 2.5, BOOK_ADDRESS),
                 "2.5 + 0.001 fee beyond 2.5 available", None,
                 "Account has insufficient balance for requested action.")
    expect_error(ccxt.BadRequest, lambda: ex.withdraw("ETH", 0.1, BOOK_ADDRESS, {"network": "BSC"}),
                 "the book's address on another network", -4001, "NETWORK_MISMATCH")
    new = "0x" + "cd" * 20
    status, body = v1("POST", "/api/v1/account/withdrawal-addresses", USER_TOKEN,
                      {"asset": "ETH", "address": new})
    check(status == 201, f"a second address added over v1 ({status} {body})")
    expect_error(ccxt.ExchangeError, lambda: ex.withdraw("ETH", 0.1, new), "an address still cooling down",
                 -4036, "ADDRESS_COOLING_DOWN")
    check(eth(ex)[:2] == (d("2.5"), 0), "nothing held by the refusals")

    # ---- withdraw to the book's address (written without its checksum)
    w = ex.withdraw("ETH", 0.5, BOOK_ADDRESS.lower(), {"withdrawOrderId": "ccxt-w-1"})
    check(w["id"] is not None and w["id"].isdigit(), f"withdraw -> id {w['id']}")
    again = ex.withdraw("ETH", 0.5, BOOK_ADDRESS, {"withdrawOrderId": "ccxt-w-1"})
    check(again["id"] == w["id"], "the same withdrawOrderId is the same withdrawal")
    free, used, total = eth(ex)
    check((free, used, total) == (d("1.999"), d("0.501"), d("2.5")),
          f"0.5 + 0.001 fee held ({free}, {used}, {total})")
    got = withdrawal(ex, w["id"])
    check(got is not None, "fetch_withdrawals shows it")
    check(d(got["amount"]) == d("0.5") and got["currency"] == "ETH" and got["type"] == "withdrawal",
          f"0.5 ETH withdrawal ({got['amount']}, {got['currency']})")
    check(got["fee"] is not None and d(got["fee"]["cost"]) == d("0.001") and got["fee"]["currency"] == "ETH",
          f"fee 0.001 ETH ({got['fee']})")
    check(got["status"] == "pending" and got["info"]["status"] == 4,
          f"auto-approved, on its way: pending, status 4 ({got['status']}, {got['info']['status']})")
    check(got["address"] == BOOK_ADDRESS and got["network"] == "ethereum", f"to the book's address ({got['address']})")
    check(got["info"]["withdrawOrderId"] == "ccxt-w-1" and got["txid"] is None, "withdrawOrderId, no txid yet")
    check(got["timestamp"] is not None and abs(got["timestamp"] - time.time() * 1000) < 600_000,
          f"applyTime parsed ({got['datetime']})")

    # An operator pays it out (manual chain adapter): broadcast, confirmed.
    wid = w["id"]
    eventually(lambda: v1("GET", f"/api/v1/withdrawals/{wid}", USER_TOKEN)[1].get("status") == "signing",
               "the payout loop claims it")
    finance = os.environ["FINANCE_TOKEN"]
    status, body = v1("POST", f"/admin/v1/withdrawals/{wid}/broadcast", finance, {"tx_hash": PAYOUT_TX})
    check(status == 200, f"broadcast ({status} {body})")
    sent = withdrawal(ex, wid)
    check(sent["status"] == "pending" and sent["txid"] == PAYOUT_TX, f"broadcast: pending with txid ({sent['status']}, {sent['txid']})")
    status, body = v1("POST", f"/admin/v1/withdrawals/{wid}/confirm", finance, {"network_fee": "0.0004"})
    check(status == 200, f"confirmed ({status} {body})")
    paid = withdrawal(ex, wid)
    check(paid["status"] == "ok" and paid["info"]["status"] == 6 and paid["txid"] == PAYOUT_TX,
          f"confirmed: ok, status 6, txid ({paid['status']}, {paid['info']['status']}, {paid['txid']})")
    check("completeTime" in paid["info"], "completeTime")
    check(withdrawal(ex, wid, status=6) is not None and withdrawal(ex, wid, status=4) is None,
          "status filter: 6 has it, 4 not")
    check(withdrawal(ex, wid, withdrawOrderId="ccxt-w-1") is not None, "withdrawOrderId filter")
    free, used, total = eth(ex)
    check((free, used, total) == (d("1.999"), 0, d("1.999")), f"paid out: 2.5 - 0.501 ({free}, {used}, {total})")

    # ---- 2FA on: a withdrawal needs the code ("totp", our addition)
    status, enrol = v1("POST", "/api/v1/account/2fa/totp", USER_TOKEN, {})
    check(status == 200 and enrol.get("secret"), f"2FA enrolment ({status})")
    status, body = v1("POST", "/api/v1/account/2fa/totp/confirm", USER_TOKEN, {"totp": totp(enrol["secret"])})
    check(status == 200 and body.get("enabled") is True, f"2FA on ({status} {body})")
    expect_error(ccxt.BadRequest, lambda: ex.withdraw("ETH", 1.2, BOOK_ADDRESS), "no totp", -1102, "TOTP_REQUIRED")
    wrong = "000000" if totp(enrol["secret"], time.time() + 30) != "000000" else "111111"
    expect_error(ccxt.OperationRejected, lambda: ex.withdraw("ETH", 1.2, BOOK_ADDRESS, {"totp": wrong}),
                 "a wrong totp", -4032, "INVALID_TOTP")
    check(eth(ex)[:2] == (d("1.999"), 0), "nothing held")
    big = ex.withdraw("ETH", 1.2, BOOK_ADDRESS, {"totp": totp(enrol["secret"], time.time() + 30)})
    waiting = withdrawal(ex, big["id"])
    check(waiting["status"] == "pending" and waiting["info"]["status"] == 2,
          f"above the auto-approval limit: awaiting approval, status 2 ({waiting['info']['status']})")
    check(eth(ex)[:2] == (d("0.798"), d("1.201")), "1.2 + 0.001 held")
    status, body = v1("POST", f"/admin/v1/withdrawals/{big['id']}/reject", finance, {"reason": "unusual destination"})
    check(status == 200, f"rejected by an operator ({status} {body})")
    rejected = withdrawal(ex, big["id"])
    check(rejected["status"] == "failed" and rejected["info"]["status"] == 3
          and rejected["info"].get("info") == "unusual destination",
          f"rejected: failed, status 3, the reason in info ({rejected['status']}, {rejected['info']})")
    check(eth(ex) == (d("1.999"), 0, d("1.999")), "everything back")
    ids = [x["id"] for x in ex.fetch_withdrawals("ETH")]
    check(sorted(ids, key=int) == [wid, big["id"]], f"fetch_withdrawals: both ({ids})")

    # ---- a frozen account: reads, but neither withdraws nor deposits
    status, body = v1("POST", f"/admin/v1/users/{os.environ['USER_ID']}/freeze", os.environ["SUPPORT_TOKEN"],
                      {"reason": "review"})
    check(status == 200, f"frozen by an operator ({status} {body})")
    acct = ex.private_get_account()
    check(acct["canWithdraw"] is False and acct["canDeposit"] is False and acct["canTrade"] is False,
          f"frozen: no canWithdraw, canDeposit, canTrade ({acct['canWithdraw']}, {acct['canDeposit']})")
    expect_error(ccxt.BadRequest,
                 lambda: ex.withdraw("ETH", 0.1, BOOK_ADDRESS, {"totp": totp(enrol["secret"], time.time() + 60)}),
                 "a frozen account withdraws", -4015, "ACCOUNT_FROZEN")
    check(len(ex.fetch_deposits("ETH")) == 2, "a frozen account still reads its deposits")

    print(f"ALL CCXT CUSTODY CHECKS PASSED ({checks} checks, ccxt {ccxt.__version__})", flush=True)


if __name__ == "__main__":
    main()
