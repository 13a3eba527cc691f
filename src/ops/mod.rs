//! Operating a running edge: the admin listener (metrics, health, readiness), configuration
//! reloads, the access log, and the demo upstream.
//!
//! Contract: `/healthz` answers as soon as the process serves the admin listener; `/readyz` only
//! once a configuration is live and every listener accepts connections. Reloads never drop
//! connections and never replace a working configuration with a broken one.

pub mod access_log;
pub mod admin;
pub mod echo;
pub mod shutdown;
pub mod supervisor;
