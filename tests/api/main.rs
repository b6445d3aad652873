//! hotline's integration tests: the real app on port 0 against real databases.

mod support;

mod cache;
mod continuity;
mod embedded;
mod faults;
mod hostile;
mod logging;
mod monitoring;
mod outage;
mod seed;
mod startup;
mod store;
mod store_api;
mod validate;
mod webhooks;
