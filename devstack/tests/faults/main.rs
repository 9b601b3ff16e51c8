//! Fault injection against the real servers: RabbitMQ and PostgreSQL restarts, a refresher
//! killed mid-refresh, a purged queue, a failing provider, a soak of 1,000 connections, and
//! webhook deliveries through a RabbitMQ restart and a killed sender.
//!
//! These tests stop and restart the machine's shared RabbitMQ and PostgreSQL, so they live in
//! their own binary (feature `fault-tests`) and run one at a time, after every other test:
//! `cargo test -p devstack --features fault-tests --test faults -- --test-threads=1`.
//! Each case asserts that no connection was lost, none expired unrefreshed and no refresh token
//! was used twice, and appends its figures to `target/reliability-report.md`.

#[path = "../e2e/support.rs"]
#[allow(dead_code)]
mod support;

mod harness;

mod cases;
