//! One memory budget for every backup and restore drill the operator runs itself (database
//! dumps and their drills; volumes are archived by Jobs with limits of their own). A run takes
//! its cost in MiB (`homeplane_backups::memory`) before it starts and gives it back when it
//! ends; a run that does not fit waits (`WaitingForMemory`) instead of starting. So the
//! operator's memory stays below its idle size plus the budget, whatever the schedules: the
//! chart's limit is sized from it (docs/reconcile.md, "Bounded backups").

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The default budget, MiB: with the operator's ~45 MiB after a restart, it keeps a 128 MiB
/// limit.
pub const DEFAULT_MIB: u32 = 64;

/// The budget.
#[derive(Debug)]
pub struct Budget {
    total: u32,
    free: Arc<Semaphore>,
}

impl Default for Budget {
    fn default() -> Self {
        Self::new(DEFAULT_MIB)
    }
}

/// Why a run cannot take its share now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Other runs hold the rest; try again soon.
    Busy {
        /// What the run needs, MiB.
        needs: u64,
        /// What is free now, MiB.
        free: u64,
        /// The whole budget, MiB.
        total: u64,
    },
    /// The run alone needs more than the whole budget.
    TooLarge {
        /// What the run needs, MiB.
        needs: u64,
        /// The whole budget, MiB.
        total: u64,
    },
}

impl Refusal {
    /// A sentence for the Backup's status.
    pub fn message(&self, what: &str) -> String {
        match self {
            Refusal::Busy { needs, free, total } => format!(
                "{what} waits for {needs} MiB of the operator's {total} MiB backup memory budget ({free} MiB free while other runs finish)"
            ),
            Refusal::TooLarge { needs, total } => format!(
                "{what} needs {needs} MiB, more than the operator's whole {total} MiB backup memory budget; lower spec.destination.partSizeMiB, concurrency or compression.level, or raise --backup-memory-mib with the operator's memory limit"
            ),
        }
    }
}

impl Budget {
    /// A budget of `total` MiB.
    pub fn new(total: u32) -> Self {
        Self {
            total,
            free: Arc::new(Semaphore::new(usize::try_from(total).unwrap_or(usize::MAX))),
        }
    }

    /// The whole budget, MiB.
    pub fn total(&self) -> u64 {
        u64::from(self.total)
    }

    /// Takes `mib` now, or says why not; the share is given back when the permit drops.
    pub fn take(&self, mib: u64) -> Result<OwnedSemaphorePermit, Refusal> {
        let total = self.total();
        if mib > total {
            return Err(Refusal::TooLarge { needs: mib, total });
        }
        let n = u32::try_from(mib).unwrap_or(u32::MAX);
        self.free
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|e| match e {
                TryAcquireError::NoPermits | TryAcquireError::Closed => Refusal::Busy {
                    needs: mib,
                    free: u64::try_from(self.free.available_permits()).unwrap_or(0),
                    total,
                },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_share_the_budget_and_give_it_back() {
        let budget = Budget::new(64);
        let first = budget.take(40).unwrap();
        let refused = budget.take(40).unwrap_err();
        assert_eq!(
            refused,
            Refusal::Busy {
                needs: 40,
                free: 24,
                total: 64
            }
        );
        assert!(refused.message("this backup").contains("waits for 40 MiB"));
        let small = budget.take(20).unwrap();
        drop(first);
        assert!(budget.take(40).is_ok(), "given back when the run ends");
        drop(small);
        let too_large = budget.take(90).unwrap_err();
        assert!(matches!(too_large, Refusal::TooLarge { .. }));
        assert!(
            too_large
                .message("this backup")
                .contains("--backup-memory-mib")
        );
    }
}
