//! hotline's integration tests: the real app on port 0 against real databases.

mod support;

mod cache;
mod embedded;
mod faults;
mod hostile;
mod limits;
mod logging;
mod monitoring;
mod monitoring_load;
mod panics;
mod seed;
mod store;
mod store_api;
mod validate;
mod webhooks;
