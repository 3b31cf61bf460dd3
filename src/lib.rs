//! hookgauge: turns the webhooks a delivery pipeline already emits into the
//! four DORA keys for Prometheus. See ARCHITECTURE.md for the map.
//!
//! Modules in layer order, lowest first: each uses only those above it in
//! this list (checked by `tests/it/tidy.rs`). The clock and the domain
//! (events, signatures, the ledger's types), the command line's definitions,
//! source plugins, the store, the metric view, the pollers, the
//! configuration that assembles their settings, then the programs: export,
//! send, the two HTTP ports and the wiring that starts them.

pub mod clock;

pub mod events;
pub mod signature;

pub mod ledger;

pub mod cli;

pub mod plugins;

pub mod store;

pub mod metrics;

pub mod poll;

pub mod config;
pub mod telemetry;

pub mod export;
pub mod send;

pub mod ingest;

pub mod admin;

pub mod app;
