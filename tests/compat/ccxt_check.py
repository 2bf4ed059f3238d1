#!/usr/bin/env python3
"""Binance compatibility check: the unmodified `ccxt` package's `binance`
class, pointed at our gateway, trades and reads real values.

Driven by exchange/tests/binance_ccxt.rs, which starts the services, creates
BTC-USDT (tick 0.01, step 0.00001, min notional 1, maker fee 0.001, taker
fee 0.002), two users each holding 10000 USDT and 1 BTC with read+trade API
keys, and a read-only key of the taker. Environment: EXCHANGE_URL,
MAKER_KEY/MAKER_SECRET, TAKER_KEY/TAKER_SECRET, RO_KEY/RO_SECRET.

Exits 0 and prints "ALL CCXT CHECKS PASSED" when every check holds.
"""

import os
import sys
import time
from decimal import Decimal

import ccxt

URL = os.environ["EXCHANGE_URL"].rstrip("/")
SYMBOL = "BTC/USDT"
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


def client(key, secret, **options):
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
                "warnOnFetchOpenOrdersWithoutSymbol": False,
                **options,
            },
        }
    )
    ex.urls["api"]["public"] = URL + "/api/v3"
    ex.urls["api"]["private"] = URL + "/api/v3"
    return ex


def eventually(fn, what, timeout=SETTLE_SECS):
    """Calls fn() until it returns a truthy value; fails after `timeout`."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
            if last:
                return last
        except ccxt.BaseError as e:  # noqa: PERF203
            last = e
        time.sleep(0.2)
    check(False, f"{what} (last: {last!r})")


def expect_error(cls, fn, what):
    try:
        fn()
    except cls as e:
        check(True, f"{what} raises {cls.__name__} ({e})")
        return
    except Exception as e:  # noqa: BLE001
        check(False, f"{what} raised {type(e).__name__} instead of {cls.__name__}: {e}")
    check(False, f"{what} raised nothing, expected {cls.__name__}")


def take_profit(maker, taker):
    """TAKE_PROFIT_LIMIT sell (ccxt's unified takeProfitPrice): rests
    untriggered, triggers when a trade prints at its stop, then trades."""
    # Clear the maker's remaining 30000 ask so the book is empty: last 30000.
    rest = maker.fetch_order(maker.fetch_open_orders(SYMBOL)[0]["id"], SYMBOL)
    left = d(rest["remaining"])
    sweep = taker.create_order(SYMBOL, "market", "buy", float(left))
    check(sweep["status"] == "closed" and d(sweep["filled"]) == left,
          f"market buy takes the last {left} at 30000")
    check(maker.fetch_open_orders(SYMBOL) == [], "the maker has nothing open")
    btc_before = d(maker.fetch_balance()["BTC"]["free"])

    tp = maker.create_order(SYMBOL, "limit", "sell", 0.002, 31000, {"takeProfitPrice": 31000})
    check(tp["info"]["type"] == "TAKE_PROFIT_LIMIT", f"sent as TAKE_PROFIT_LIMIT ({tp['info']['type']})")
    check(tp["status"] == "open" and d(tp["filled"]) == 0, f"take-profit waits ({tp['status']}, {tp['filled']})")
    check(d(tp["takeProfitPrice"]) == 31000 and d(tp["price"]) == 31000, "take-profit and limit price 31000")
    got = maker.fetch_order(tp["id"], SYMBOL)
    check(got["info"]["type"] == "TAKE_PROFIT_LIMIT" and got["info"]["stopPrice"] == "31000.00000000",
          f"fetch_order: type and stopPrice ({got['info']['type']}, {got['info']['stopPrice']})")
    check(got["info"]["isWorking"] is False, "untriggered: isWorking false")
    check(got["status"] == "open" and d(got["filled"]) == 0, "untriggered: open, nothing filled")
    mbal = maker.fetch_balance()
    check(d(mbal["BTC"]["used"]) == d("0.002") and d(mbal["BTC"]["free"]) == btc_before - d("0.002"),
          f"the pending take-profit locks its 0.002 BTC ({mbal['BTC']})")
    eventually(lambda: maker.fetch_order_book(SYMBOL)["asks"] == [],
               "an untriggered take-profit is not in the book (no asks)")
    # A sell take-profit at or below the last price would trigger at once.
    expect_error(ccxt.OrderImmediatelyFillable,
                 lambda: maker.create_order(SYMBOL, "limit", "sell", 0.001, 30000, {"takeProfitPrice": 30000}),
                 "a take-profit sell at the last price")
    # TAKE_PROFIT (market on trigger): placed pending, then canceled.
    tpm = maker.create_order(SYMBOL, "market", "sell", 0.001, None, {"takeProfitPrice": 40000})
    check(tpm["info"]["type"] == "TAKE_PROFIT" and tpm["status"] == "open",
          f"TAKE_PROFIT market sell waits ({tpm['info']['type']}, {tpm['status']})")
    check(maker.cancel_order(tpm["id"], SYMBOL)["status"] == "canceled", "pending TAKE_PROFIT canceled")

    # A bid at 31000 rests (no asks); the maker sells 0.001 into it: the
    # trade prints 31000, which triggers the take-profit, whose sell limit
    # 31000 then takes the rest of that bid.
    bid = taker.create_order(SYMBOL, "limit", "buy", 0.003, 31000)
    check(bid["status"] == "open" and d(bid["filled"]) == 0, "a bid at 31000 rests")
    check(maker.fetch_order(tp["id"], SYMBOL)["status"] == "open", "a resting bid triggers nothing")
    hit = maker.create_order(SYMBOL, "limit", "sell", 0.001, 31000)
    check(hit["status"] == "closed" and d(hit["filled"]) == d("0.001"), "a sell prints 31000")

    done = eventually(
        lambda: (lambda o: o if o["status"] == "closed" else None)(maker.fetch_order(tp["id"], SYMBOL)),
        "the take-profit triggers and fills")
    check(d(done["filled"]) == d("0.002") and d(done["cost"]) == 62 and d(done["average"]) == 31000,
          f"take-profit filled 0.002 at 31000 ({done['filled']}, {done['cost']}, {done['average']})")
    check(done["info"]["isWorking"] is True, "triggered: isWorking true")
    fills = eventually(
        lambda: [t for t in maker.fetch_my_trades(SYMBOL) if t["order"] == tp["id"]] or None,
        "the take-profit's fill in myTrades")
    check(len(fills) == 1 and d(fills[0]["price"]) == 31000 and d(fills[0]["amount"]) == d("0.002"),
          f"one fill of 0.002 at 31000 ({[(f['price'], f['amount']) for f in fills]})")
    check(fills[0]["takerOrMaker"] == "taker" and fills[0]["fee"]["currency"] == "USDT"
          and d(fills[0]["fee"]["cost"]) == d("0.124"),
          f"triggered, it took the bid: taker fee 0.2% of 62 USDT ({fills[0]['fee']})")
    filled_bid = taker.fetch_order(bid["id"], SYMBOL)
    check(filled_bid["status"] == "closed" and d(filled_bid["filled"]) == d("0.003"),
          "the bid is filled: 0.001 by the sell, 0.002 by the take-profit")
    check(d(maker.fetch_balance()["BTC"]["used"]) == 0, "nothing of the maker's BTC stays locked")


def main():
    maker = client(os.environ["MAKER_KEY"], os.environ["MAKER_SECRET"])
    taker = client(os.environ["TAKER_KEY"], os.environ["TAKER_SECRET"])

    # ---- markets: precision and limits from our markets table
    markets = maker.load_markets()
    check(SYMBOL in markets, f"load_markets lists {SYMBOL}")
    m = markets[SYMBOL]
    check(m["id"] == "BTCUSDT" and m["base"] == "BTC" and m["quote"] == "USDT", "market id/base/quote")
    check(m["spot"] and m["active"], "spot and active")
    check(d(m["precision"]["price"]) == d("0.01"), f"price precision 0.01 ({m['precision']['price']})")
    check(d(m["precision"]["amount"]) == d("0.00001"), f"amount precision 0.00001 ({m['precision']['amount']})")
    check(d(m["limits"]["amount"]["min"]) > 0, f"amount min ({m['limits']['amount']['min']})")
    check(d(m["limits"]["cost"]["min"]) == d("1"), f"cost min 1 ({m['limits']['cost']['min']})")
    check(d(m["limits"]["price"]["min"]) == d("0.01"), "price min is the tick")
    taker.load_markets()

    # ---- a resting maker order
    sell = maker.create_order(SYMBOL, "limit", "sell", 0.01, 30000)
    check(sell["id"] is not None, f"create_order limit sell -> id {sell['id']}")
    check(sell["status"] == "open", f"limit sell is open ({sell['status']})")
    check(d(sell["price"]) == 30000 and d(sell["amount"]) == d("0.01"), "price and amount as sent")
    fetched = maker.fetch_order(sell["id"], SYMBOL)
    check(fetched["id"] == sell["id"] and fetched["status"] == "open", "fetch_order: open")
    check(fetched["side"] == "sell" and fetched["type"] == "limit", "fetch_order: side and type")
    opened = maker.fetch_open_orders(SYMBOL)
    check([o["id"] for o in opened] == [sell["id"]], "fetch_open_orders: exactly the resting order")

    def book_has_ask():
        ob = maker.fetch_order_book(SYMBOL)
        return ob if ob["asks"] and ob["asks"][0][0] == 30000 else None

    ob = eventually(book_has_ask, "fetch_order_book shows the ask")
    check(ob["asks"][0][1] == 0.01, f"ask size 0.01 ({ob['asks'][0]})")
    check(ob["nonce"] is not None and ob["nonce"] > 0, f"order book nonce is our depth seq ({ob['nonce']})")

    # ---- a market taker buy that fills against it
    buy = taker.create_order(SYMBOL, "market", "buy", 0.004)
    check(buy["status"] == "closed", f"market buy is closed ({buy['status']})")
    check(d(buy["filled"]) == d("0.004"), f"filled 0.004 ({buy['filled']})")
    check(d(buy["cost"]) == d("120"), f"cost 120 ({buy['cost']})")
    check(d(buy["average"]) == d("30000"), f"average 30000 ({buy['average']})")
    check(len(buy["trades"]) == 1, "FULL response carries the fill")

    t_trades = eventually(lambda: taker.fetch_my_trades(SYMBOL), "taker sees its trade")
    t = t_trades[-1]
    check(t["side"] == "buy" and t["takerOrMaker"] == "taker", "taker trade: buy, taker")
    check(d(t["price"]) == 30000 and d(t["amount"]) == d("0.004"), "taker trade price and amount")
    check(t["fee"]["currency"] == "BTC" and d(t["fee"]["cost"]) == d("0.000008"),
          f"taker fee 0.2% of the BTC received ({t['fee']})")
    check(t["order"] == buy["id"], "taker trade names its order")
    m_trades = eventually(lambda: maker.fetch_my_trades(SYMBOL), "maker sees its trade")
    mt = m_trades[-1]
    check(mt["side"] == "sell" and mt["takerOrMaker"] == "maker", "maker trade: sell, maker")
    check(mt["fee"]["currency"] == "USDT" and d(mt["fee"]["cost"]) == d("0.12"),
          f"maker fee 0.1% of the USDT received ({mt['fee']})")

    partially = maker.fetch_order(sell["id"], SYMBOL)
    check(partially["status"] == "open" and d(partially["filled"]) == d("0.004"),
          f"maker order partially filled ({partially['status']}, {partially['filled']})")
    check(d(partially["remaining"]) == d("0.006"), "remaining 0.006")

    # ---- balances
    bal = taker.fetch_balance()
    check(d(bal["BTC"]["free"]) == d("1.003992"), f"taker BTC 1 + 0.004 - fee ({bal['BTC']})")
    check(d(bal["USDT"]["free"]) == d("9880"), f"taker USDT 10000 - 120 ({bal['USDT']})")
    mbal = maker.fetch_balance()
    check(d(mbal["BTC"]["used"]) == d("0.006"), f"maker BTC locked by the rest ({mbal['BTC']})")
    check(d(mbal["BTC"]["total"]) == d("0.996"), "maker BTC total 1 - 0.004")
    check(d(mbal["USDT"]["free"]) == d("10119.88"), f"maker USDT 10000 + 120 - 0.12 ({mbal['USDT']})")

    # ---- public market data after the trade
    trades = eventually(
        lambda: [x for x in maker.fetch_trades(SYMBOL) if x["price"] == 30000] or None,
        "fetch_trades shows the trade")
    check(trades[-1]["amount"] == 0.004 and trades[-1]["side"] == "buy", "public trade: 0.004, taker bought")
    ticker = eventually(
        lambda: (lambda tk: tk if tk["last"] == 30000 else None)(maker.fetch_ticker(SYMBOL)),
        "fetch_ticker last 30000")
    check(ticker["ask"] == 30000 and ticker["askVolume"] == 0.006, f"ticker best ask ({ticker['ask']}, {ticker['askVolume']})")
    check(d(ticker["baseVolume"]) == d("0.004"), f"24h volume 0.004 ({ticker['baseVolume']})")
    tickers = maker.fetch_tickers()
    check(SYMBOL in tickers and tickers[SYMBOL]["last"] == 30000, "fetch_tickers")
    tickers = maker.fetch_tickers([SYMBOL])
    check(list(tickers) == [SYMBOL], "fetch_tickers([symbol])")
    ohlcv = eventually(lambda: maker.fetch_ohlcv(SYMBOL, "1m"), "fetch_ohlcv has a candle")
    last = ohlcv[-1]
    check(last[4] == 30000 and last[2] >= 30000 and d(last[5]) >= d("0.004"), f"1m candle {last}")
    since = ohlcv[-1][0]
    check(maker.fetch_ohlcv(SYMBOL, "1m", since=since)[0][0] == since, "fetch_ohlcv since")

    # ---- limit maker: rests, then cancel
    lm = maker.create_order(SYMBOL, "limit", "buy", 0.01, 20000, {"postOnly": True})
    check(lm["status"] == "open", f"limit maker rests ({lm['status']})")
    check(maker.fetch_order(lm["id"], SYMBOL)["postOnly"] is True, "fetched as LIMIT_MAKER (postOnly)")
    canceled = maker.cancel_order(lm["id"], SYMBOL)
    check(canceled["status"] == "canceled", f"cancel_order -> canceled ({canceled['status']})")
    check(maker.fetch_order(lm["id"], SYMBOL)["status"] == "canceled", "fetch_order after cancel")
    # A limit maker that would take the 30000 ask is refused, never trades.
    # Binance answers -2010 "Order would immediately match and take.",
    # which ccxt raises as OrderImmediatelyFillable.
    try:
        crossing = taker.create_order(SYMBOL, "limit", "buy", 0.001, 30000, {"postOnly": True})
        check(False, f"crossing limit maker refused (got {crossing['status']})")
    except ccxt.OrderImmediatelyFillable as e:
        check("Order would immediately match and take." in str(e),
              f"crossing limit maker -> OrderImmediatelyFillable ({e})")
    refused = [o for o in taker.fetch_orders(SYMBOL) if o["postOnly"] and o["price"] == 30000]
    check(len(refused) == 1 and refused[0]["status"] in ("rejected", "expired", "canceled")
          and d(refused[0]["filled"] or 0) == 0,
          f"the refused limit maker is recorded as not resting, nothing filled ({refused})")
    check(taker.fetch_open_orders(SYMBOL) == [], "the taker has nothing open")
    check([o["id"] for o in maker.fetch_open_orders(SYMBOL)] == [sell["id"]],
          "only the partially filled sell is open")

    # ---- market buy by quote amount
    qbuy = taker.create_order(SYMBOL, "market", "buy", None, None, {"quoteOrderQty": 30})
    check(qbuy["status"] == "closed" and d(qbuy["cost"]) == 30 and d(qbuy["filled"]) == d("0.001"),
          f"market buy for 30 USDT ({qbuy['status']}, {qbuy['cost']}, {qbuy['filled']})")

    # ---- errors map to ccxt's exception classes
    expect_error(ccxt.InsufficientFunds,
                 lambda: taker.create_order(SYMBOL, "limit", "buy", 1, 29000), "buying beyond the balance")
    expect_error(ccxt.OrderNotFound, lambda: maker.fetch_order("999999999", SYMBOL), "fetch_order unknown")
    expect_error(ccxt.OrderNotFound, lambda: maker.cancel_order("999999999", SYMBOL), "cancel_order unknown")
    expect_error(ccxt.OrderNotFound, lambda: maker.cancel_order(lm["id"], SYMBOL), "cancel_order of a canceled order")
    # Binance answers -1013 "Filter failure: NOTIONAL", which ccxt maps to BadRequest.
    expect_error(ccxt.BadRequest,
                 lambda: maker.create_order(SYMBOL, "limit", "buy", 0.01, 1, {"newClientOrderId": "tiny"}),
                 "an order below the minimum notional")
    bad = client(os.environ["TAKER_KEY"], "not-the-secret")
    bad.markets = maker.markets
    bad.markets_by_id = maker.markets_by_id
    expect_error(ccxt.AuthenticationError, bad.fetch_balance, "a wrong secret")
    nobody = client("A" * 64, os.environ["TAKER_SECRET"])
    nobody.markets = maker.markets
    nobody.markets_by_id = maker.markets_by_id
    expect_error(ccxt.AuthenticationError, nobody.fetch_balance, "an unknown key")
    # (ccxt turns -2015 into DDoSProtection once a key has authenticated
    # before, as Binance uses it for temporary bans: place first.)
    ro = client(os.environ["RO_KEY"], os.environ["RO_SECRET"])
    ro.load_markets()
    expect_error(ccxt.AuthenticationError,
                 lambda: ro.create_order(SYMBOL, "limit", "buy", 0.01, 20000), "a read-only key places")
    check(d(ro.fetch_balance()["USDT"]["free"]) > 0, "a read-only key reads")
    check(ro.fetch_open_orders(SYMBOL) == [], "the read-only key placed nothing")
    skewed = client(os.environ["TAKER_KEY"], os.environ["TAKER_SECRET"], adjustForTimeDifference=False)
    skewed.markets = maker.markets
    skewed.markets_by_id = maker.markets_by_id
    skewed.options["timeDifference"] = 120000  # our clock 2 minutes ahead of the request's
    expect_error(ccxt.InvalidNonce, skewed.fetch_balance, "a timestamp outside recvWindow")

    take_profit(maker, taker)

    print(f"ALL CCXT CHECKS PASSED ({checks} checks, ccxt {ccxt.__version__})", flush=True)


if __name__ == "__main__":
    main()
