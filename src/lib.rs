//! hookgauge: turns the webhooks a delivery pipeline already emits into the
//! four DORA keys for Prometheus. See ARCHITECTURE.md for the map.
//!
//! Modules in reading order: configuration and CLI, the domain (events and
//! ledger), authentication, source plugins, the store, the metric view, the
//! two HTTP ports, and the wiring that starts them.

pub mod cli;
pub mod config;
pub mod telemetry;

pub mod events;
pub mod ledger;
pub mod plugins;
pub mod signature;

pub mod metrics;
pub mod store;

pub mod admin;
pub mod app;
pub mod ingest;

pub mod poll;

pub mod export;
pub mod send;
