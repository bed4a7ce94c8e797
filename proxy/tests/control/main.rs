//! Control-plane integration tests (reload, drain, admin API, metrics, logs).
