//! End-to-end tests: the three services and the mock provider, in-process, against the real
//! PostgreSQL and RabbitMQ. One stack (database + queue prefix) per test.

mod attacks;
mod callbacks;
mod connect_form;
mod credentials;
mod flow;
mod machine;
mod management;
mod proxy;
mod refresh;
mod security;
mod support;
mod webhooks;
