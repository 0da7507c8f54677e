//! Backends of the bus port ([`tidings_core::bus::Bus`]), chosen by `bus.backend`:
//!
//! - [`embedded`]: a durable partitioned log on local disk (redb), for one process
//! - [`kafka`]: Apache Kafka through librdkafka, for many processes

pub mod embedded;
pub mod kafka;

use std::sync::Arc;
use tidings_core::bus::Bus;
use tidings_core::config::Config;
use tidings_core::{Error, Result};

/// Open the bus the config names.
pub fn open(config: &Config) -> Result<Arc<dyn Bus>> {
    match config.bus.backend.as_str() {
        "embedded" => Ok(Arc::new(embedded::EmbeddedBus::open(
            &config.data_dir.join("bus.redb"),
            std::time::Duration::from_secs(config.bus.retention_hours * 3600),
        )?)),
        "kafka" => Ok(Arc::new(kafka::KafkaBus::connect(
            &config.bus,
            &config.node_id,
        )?)),
        other => Err(Error::invalid(
            "config_invalid",
            format!("bus.backend `{other}` (expected embedded or kafka)"),
        )),
    }
}
