//! The GPUs a plan's trace is served by: how many, in instances of how many (tensor
//! parallelism), and the layout one GPU holds (see the [`plan`](super) module docs for what is
//! modelled).

use kvtier::KvLayout;
use serde::Serialize;

use super::Route;
use crate::{Error, Result};

/// The GPUs the trace is served by (see the module docs for what is modelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cluster {
    /// GPUs in all. Default 1.
    pub gpus: usize,
    /// Tensor-parallel degree: GPUs per serving instance. Default 1.
    pub tp: usize,
    /// How requests are dealt out to the instances. Default round robin.
    pub route: Route,
}

impl Default for Cluster {
    fn default() -> Self {
        Self { gpus: 1, tp: 1, route: Route::RoundRobin }
    }
}

impl Cluster {
    /// `gpus` GPUs in instances of `tp`, requests dealt out by `route`.
    ///
    /// ```
    /// use kvtier_cli::plan::{Cluster, Route};
    /// let c = Cluster::new(8, 2, Route::PrefixAffinity);
    /// assert_eq!(c.instances(), 4);
    /// assert!(c.validate().is_ok());
    /// assert!(Cluster::new(6, 4, Route::RoundRobin).validate().is_err()); // 6 GPUs are not instances of 4
    /// ```
    pub fn new(gpus: usize, tp: usize, route: Route) -> Self {
        Self { gpus, tp, route }
    }

    /// Serving instances: `gpus / tp`.
    pub fn instances(&self) -> usize {
        self.gpus / self.tp.max(1)
    }

    /// Checks that there is at least one GPU and that `tp` divides `gpus`.
    pub fn validate(&self) -> Result<()> {
        if self.gpus == 0 {
            return Err(Error::invalid("gpus", 0, "needs at least one GPU"));
        }
        if self.tp == 0 || !self.gpus.is_multiple_of(self.tp) {
            return Err(Error::invalid(
                "tensor parallel",
                self.tp,
                format!("must be at least 1 and divide the {} GPUs into whole instances", self.gpus),
            ));
        }
        Ok(())
    }

    /// The layout one GPU of an instance holds: `layout` with `kv_heads / tp` KV heads.
    ///
    /// ```
    /// use kvtier::KvLayout;
    /// use kvtier_cli::plan::{Cluster, Route};
    /// let layout = KvLayout::preset("llama-3.1-70b", 16)?; // 8 KV heads
    /// let per_gpu = Cluster::new(8, 4, Route::RoundRobin).per_gpu_layout(layout)?;
    /// assert_eq!(per_gpu.page_bytes() * 4, layout.page_bytes());
    /// assert!(Cluster::new(16, 16, Route::RoundRobin).per_gpu_layout(layout).is_err());
    /// # Ok::<(), kvtier_cli::Error>(())
    /// ```
    pub fn per_gpu_layout(&self, layout: KvLayout) -> Result<KvLayout> {
        crate::model::shard(layout, self.tp)
    }
}
