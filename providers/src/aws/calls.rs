//! Counts every EC2 and SSM request this process sends, by operation.
//!
//! In: each HTTP attempt the SDK is about to transmit (an interceptor, so retries and
//! pages count too). Out: `ec2:RunInstances`- and `ssm:PutParameter`-style counts for
//! `--stats` and the tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;

/// Shared request counts; cloned into the SDK client as an interceptor.
#[derive(Debug, Clone)]
pub(crate) struct CallCounter {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    /// The service prefix of the client it is installed in.
    service: &'static str,
}

impl Default for CallCounter {
    fn default() -> CallCounter {
        CallCounter {
            counts: Arc::default(),
            service: "ec2",
        }
    }
}

impl CallCounter {
    /// The same counts, for another service's client.
    pub(crate) fn for_service(&self, service: &'static str) -> CallCounter {
        CallCounter {
            counts: Arc::clone(&self.counts),
            service,
        }
    }

    /// The counts so far.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "fleet::aws::CallCounter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg
            .load::<Metadata>()
            .map_or("Unknown", |metadata| metadata.name())
            .to_string();
        if let Ok(mut counts) = self.counts.lock() {
            *counts
                .entry(format!("{}:{operation}", self.service))
                .or_insert(0) += 1;
        }
        Ok(())
    }
}
