//! Vestibule: a multi-tenant auth edge.
//!
//! Module map: [`config`] turns the file into an immutable snapshot; [`tenancy`] maps hosts to
//! applications and tenants; [`tls`] terminates TLS; [`acme`] obtains on-demand certificates; [`auth`] authenticates and authorizes per
//! tenant; [`proxy`] forwards; [`ops`] reloads, reports and serves the admin listener;
//! [`metrics`] counts.

pub mod acme;
pub mod auth;
pub mod config;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod tenancy;
pub mod tls;
