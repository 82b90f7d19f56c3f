//! The headnode's own metrics, read from the pool at each scrape (nothing is recorded on the
//! message path beyond the pool's own counters):
//!
//! - `registro_datanode_up{datanode}`: 1 while the datanode is SERVING, 0 otherwise;
//! - `registro_routed_total{datanode}`: messages stored on it through this headnode;
//! - `registro_heartbeat_transitions_total{datanode,to}`: changes of its status into `to`
//!   (SERVING, NOT_SERVING, UNREACHABLE).
//!
//! Series exist for the datanodes in the pool now; a datanode that re-registers at a new address
//! starts its counters again (Prometheus reads that as a counter reset).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::pool::{Liveness, Pool};

/// Registers the pool's metrics in `registry`.
pub fn register(registry: &mut Registry, pool: Arc<Pool>) {
    registry.register_collector(Box::new(PoolCollector(pool)));
}

/// Encodes the pool's state on each scrape.
struct PoolCollector(Arc<Pool>);

impl std::fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolCollector")
    }
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let members = self.0.members();
        let up = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "registro_datanode_up",
            "1 while the datanode's last health check (or health watch, or forward) found it SERVING, 0 otherwise",
            None,
            up.metric_type(),
        )?;
        for m in &members {
            let serving = m.observation().liveness == Liveness::Serving;
            let labels = [("datanode", m.name.as_str())];
            ConstGauge::new(i64::from(serving)).encode(family.encode_family(&labels)?)?;
        }

        let counter = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "registro_routed",
            "Messages stored on the datanode through this headnode",
            None,
            counter.metric_type(),
        )?;
        for m in &members {
            let labels = [("datanode", m.name.as_str())];
            ConstCounter::new(m.routed()).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "registro_heartbeat_transitions",
            "Changes of the datanode's status, by the status it changed to",
            None,
            counter.metric_type(),
        )?;
        for m in &members {
            for (to, count) in m.transitions() {
                let labels = [("datanode", m.name.as_str()), ("to", to.as_str())];
                ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
