//! Integration tests, built into one binary: the real app on loopback port 0
//! with a real SQLite file, or the real binary as a child process, driven
//! over HTTP. `TEST_LOG=1` shows the app's logs.

mod harness;

mod admin;
mod alerts;
mod attacks;
mod cdevents;
mod cli;
mod crash;
mod deploy;
mod docs;
mod embedded;
mod fuzz;
mod keys;
mod limits;
mod monitoring;
mod page;
mod pelorus;
mod pipelines;
mod poll;
mod poll_gitea;
mod poll_gitlab;
mod poll_reviews;
mod polling;
mod postgres;
mod prometheus;
mod props;
mod replicas;
mod replicas_prometheus;
mod rules;
mod signatures;
mod sources;
mod store;
mod tidy;
