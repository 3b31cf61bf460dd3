//! Source plugins: how a delivery from one kind of sender is recognised,
//! authenticated and mapped to events. A plugin never touches the store or
//! the metrics; the ingest path does that once for all sources.

pub mod pelorus;
