//! Public REST API, auth, admin API, rate limits and private WebSocket push
