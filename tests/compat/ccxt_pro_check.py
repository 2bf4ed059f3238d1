#!/usr/bin/env python3
"""Binance WebSocket compatibility check: the unmodified `ccxt.pro.binance`
class, with `urls.api.ws.spot` pointed at our marketdata WebSocket and its
REST urls at our gateway's `/api/v3`, watches our order book and trades.

Driven by exchange/tests/binance_ccxt_pro.rs, which starts the services,
creates BTC-USDT (tick 0.01, step 0.00001), and two users each holding
10000 USDT and 1 BTC with read+trade API keys. Environment: EXCHANGE_URL
(gateway), MARKETDATA_WS_URL (`ws://host:port/ws`), MAKER_KEY/MAKER_SECRET,
TAKER_KEY/TAKER_SECRET.

What it shows: `watch_order_book` syncs from our depth stream (ccxt's own
"buffer diffs, fetch snapshot, U/u" procedure, with its checksum/gap check
on) and its local book equals our REST depth at the same `lastUpdateId`
after orders are placed, traded and cancelled; `watch_trades` receives our
trades with the right id, price, amount and taker side; `watch_ticker`
(24hrTicker) and `watch_ohlcv` (kline_1m) follow the trade.

Exits 0 and prints "ALL CCXT PRO CHECKS PASSED" when every check holds.
"""

import asyncio
import os
import sys
import time
from decimal import Decimal

import ccxt.pro

URL = os.environ["EXCHANGE_URL"].rstrip("/")
WS_URL = os.environ["MARKETDATA_WS_URL"].rstrip("/")
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


def client(key, secret):
    ex = ccxt.pro.binance(
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
                # ccxt's default; stated because the check relies on it: a
                # gap in U/u raises instead of being papered over.
                "watchOrderBook": {"checksum": True},
            },
        }
    )
    ex.urls["api"]["public"] = URL + "/api/v3"
    ex.urls["api"]["private"] = URL + "/api/v3"
    ex.urls["api"]["ws"]["spot"] = WS_URL
    ex.urls["api"]["ws"]["margin"] = WS_URL
    return ex


def levels(side, n=1000):
    return [[d(p), d(q)] for p, q, *_ in side[:n]]


async def book_equals_rest(ex, what, want=None):
    """Waits until ccxt's local book (from the stream) equals our REST depth
    at the same lastUpdateId, and (if given) `want(book)` holds."""
    deadline = time.time() + SETTLE_SECS
    last = None
    while time.time() < deadline:
        # The book ccxt keeps current from the stream (watch_order_book
        # itself only returns on the next update).
        ob = ex.orderbooks.get(SYMBOL)
        if ob is None:
            ob = await asyncio.wait_for(ex.watch_order_book(SYMBOL), SETTLE_SECS)
        rest = await ex.fetch_order_book(SYMBOL, 1000)
        local = (ob["nonce"], levels(ob["bids"]), levels(ob["asks"]))
        remote = (rest["nonce"], levels(rest["bids"]), levels(rest["asks"]))
        last = (local, remote)
        if local == remote and (want is None or want(ob)):
            check(True, f"{what}: local book == REST depth at lastUpdateId {ob['nonce']} "
                        f"({len(local[1])} bids, {len(local[2])} asks)")
            return ob
        # Not yet the same update: wait for the stream to move on.
        try:
            await asyncio.wait_for(ex.watch_order_book(SYMBOL), 0.5)
        except asyncio.TimeoutError:
            pass
    check(False, f"{what} (last local/REST: {last!r})")


async def main():
    maker = client(os.environ["MAKER_KEY"], os.environ["MAKER_SECRET"])
    taker = client(os.environ["TAKER_KEY"], os.environ["TAKER_SECRET"])
    try:
        await run(maker, taker)
    finally:
        await maker.close()
        await taker.close()
    print(f"ALL CCXT PRO CHECKS PASSED ({checks} checks)", flush=True)


async def run(maker, taker):
    await maker.load_markets()
    await taker.load_markets()
    check(SYMBOL in maker.markets, "load_markets has BTC/USDT")

    # A book before anyone watches: the first sync starts from a REST snapshot.
    await maker.create_order(SYMBOL, "limit", "buy", 0.01, 29000)
    await maker.create_order(SYMBOL, "limit", "sell", 0.02, 31000)

    ob = await asyncio.wait_for(taker.watch_order_book(SYMBOL), SETTLE_SECS)
    check(ob["nonce"] is not None, f"watch_order_book synced (nonce {ob['nonce']})")
    await book_equals_rest(
        taker, "initial book",
        lambda b: any(p == 29000 for p, *_ in b["bids"]) and any(p == 31000 for p, *_ in b["asks"]))

    # Changes while watching arrive as depthUpdate diffs.
    placed = []
    for i in range(5):
        placed.append(await maker.create_order(SYMBOL, "limit", "buy", 0.001 * (i + 1), 29500 + i))
        placed.append(await maker.create_order(SYMBOL, "limit", "sell", 0.002 * (i + 1), 30500 + i))
    ob = await book_equals_rest(
        taker, "after 10 more orders",
        lambda b: len(b["bids"]) >= 6 and len(b["asks"]) >= 6)
    check(ob["bids"][0][0] == 29504 and ob["asks"][0][0] == 30500,
          f"best bid/ask 29504/30500 ({ob['bids'][0][0]}/{ob['asks'][0][0]})")

    # Trades: watch, then take the best ask and part of the next.
    trades_task = asyncio.create_task(taker.watch_trades(SYMBOL))
    ticker_task = asyncio.create_task(taker.watch_ticker(SYMBOL))  # @miniTicker
    full_ticker_task = asyncio.create_task(maker.watch_ticker(SYMBOL, {"name": "ticker"}))
    ohlcv_task = asyncio.create_task(taker.watch_ohlcv(SYMBOL, "1m"))
    await asyncio.sleep(0.5)  # the SUBSCRIBE is answered before the trade
    buy = await taker.create_order(SYMBOL, "market", "buy", 0.003)
    check(buy["id"] is not None, f"taker market buy 0.003 -> {buy['id']}")
    first = await asyncio.wait_for(trades_task, SETTLE_SECS)
    check(len(first) >= 1, f"watch_trades resolved with {len(first)} trade(s)")
    # Every trade the stream delivered since subscribing stays in ccxt's cache.
    deadline = time.time() + SETTLE_SECS
    got = list(taker.trades.get(SYMBOL) or [])
    while sum(d(t["amount"]) for t in got) < d("0.003") and time.time() < deadline:
        await asyncio.sleep(0.1)
        got = list(taker.trades.get(SYMBOL) or [])
    check(sum(d(t["amount"]) for t in got) == d("0.003"), f"watch_trades: 0.003 traded in {len(got)} trades")
    check(all(t["side"] == "buy" and t["symbol"] == SYMBOL for t in got), "taker side buy, symbol BTC/USDT")
    check([d(t["price"]) for t in got] == [d(30500), d(30501)][: len(got)],
          f"prices walk the book ({[t['price'] for t in got]})")
    check(all(t["id"] is not None and t["timestamp"] for t in got), "trade ids and timestamps")
    ticker = await asyncio.wait_for(ticker_task, SETTLE_SECS)
    check(ticker["last"] == 30501 and ticker["symbol"] == SYMBOL,
          f"watch_ticker: last {ticker['last']} (24hrMiniTicker)")
    ticker = await asyncio.wait_for(full_ticker_task, SETTLE_SECS)
    check(ticker["last"] == 30501 and ticker["bid"] == 29504 and ticker["ask"] == 30501,
          f"watch_ticker name=ticker: last/bid/ask {ticker['last']}/{ticker['bid']}/{ticker['ask']} (24hrTicker)")
    candles = await asyncio.wait_for(ohlcv_task, SETTLE_SECS)
    check(candles and candles[-1][4] == 30501 and candles[-1][2] >= 30501,
          f"watch_ohlcv 1m: close 30501 ({candles[-1] if candles else None})")
    rest_trades = await taker.fetch_trades(SYMBOL)
    rest_ids = {t["id"] for t in rest_trades}
    check(all(t["id"] in rest_ids for t in got), "streamed trade ids are REST trade ids")

    ob = await book_equals_rest(
        taker, "after the trade",
        lambda b: b["asks"][0][0] == 30501 and d(b["asks"][0][1]) == d("0.003"))

    # Cancels remove levels.
    for o in (placed[0], placed[2]):
        await maker.cancel_order(o["id"], SYMBOL)
    await book_equals_rest(
        taker, "after 2 cancels",
        lambda b: not any(p in (29500, 29501) for p, *_ in b["bids"]))


if __name__ == "__main__":
    asyncio.run(main())
