//! Runtime shared by every service: config, telemetry, HTTP skeleton, Postgres, Redis streams, auth primitives
