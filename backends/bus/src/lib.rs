//! Backends of the bus port ([`tidings_core::bus::Bus`]), chosen by `bus.backend`:
//!
//! - [`embedded`]: a durable partitioned log on local disk (redb), for one process
//! - `kafka`: Apache Kafka; not built into this version, asking for it is a clear error

pub mod embedded;

use std::sync::Arc;
use tidings_core::bus::Bus;
use tidings_core::config::Config;
use tidings_core::{Error, Result};

/// Open the bus the config names.
pub fn open(config: &Config) -> Result<Arc<dyn Bus>> {
    match config.bus.backend.as_str() {
        "embedded" => Ok(Arc::new(embedded::EmbeddedBus::open(
            &config.data_dir.join("bus.redb"),
            config.bus.partitions,
            std::time::Duration::from_secs(config.bus.retention_hours * 3600),
        )?)),
        other => Err(Error::invalid(
            "backend_unavailable",
            format!("bus.backend `{other}` is not built into this binary (available: embedded)"),
        )),
    }
}
