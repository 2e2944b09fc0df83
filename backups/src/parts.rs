//! Multipart part sizing. R2 requires every part but the last to have the same size, between
//! 5 MiB and 5 GiB, and at most 10,000 parts; memory use of an upload is part size times the
//! parts in flight, whatever the size of the backup.

/// Smallest part R2 and S3 accept (except the last).
pub const MIN_PART: u64 = 5 << 20;
/// Largest part R2 and S3 accept.
pub const MAX_PART: u64 = 5 << 30;
/// Most parts in one upload.
pub const MAX_PARTS: u64 = 10_000;

/// A part size that is not allowed, or an object too large for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartPlanError {
    /// The part size is outside 5 MiB to 5 GiB.
    #[error("part size {0} bytes is outside the 5 MiB to 5 GiB that R2 and S3 accept")]
    PartSize(u64),
    /// More than 10,000 parts would be needed.
    #[error(
        "{size} bytes need {parts} parts of {part_size} bytes, more than the 10,000 allowed; raise the part size to at least {needed} bytes"
    )]
    TooManyParts {
        size: u64,
        part_size: u64,
        parts: u64,
        needed: u64,
    },
    /// At least one part must be in flight.
    #[error("at least one part must be uploaded at a time")]
    NoConcurrency,
}

/// A fixed part size and how many parts may be in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    part_size: u64,
    concurrency: u64,
}

impl PartPlan {
    /// A plan of `part_size`-byte parts with `concurrency` in flight.
    pub fn new(part_size: u64, concurrency: u64) -> Result<Self, PartPlanError> {
        if !(MIN_PART..=MAX_PART).contains(&part_size) {
            return Err(PartPlanError::PartSize(part_size));
        }
        if concurrency == 0 {
            return Err(PartPlanError::NoConcurrency);
        }
        Ok(Self {
            part_size,
            concurrency,
        })
    }

    /// The size of every part but the last.
    pub fn part_size(&self) -> u64 {
        self.part_size
    }

    /// The largest object this plan can upload.
    pub fn max_object_size(&self) -> u64 {
        self.part_size.saturating_mul(MAX_PARTS)
    }

    /// Upper bound of the bytes buffered by an upload.
    pub fn memory_bound(&self) -> u64 {
        self.part_size.saturating_mul(self.concurrency)
    }

    /// Number of parts for an object of `size` bytes (an empty object is one empty part).
    pub fn parts_for(&self, size: u64) -> Result<u64, PartPlanError> {
        let parts = size.div_ceil(self.part_size).max(1);
        if parts > MAX_PARTS {
            return Err(PartPlanError::TooManyParts {
                size,
                part_size: self.part_size,
                parts,
                needed: size.div_ceil(MAX_PARTS),
            });
        }
        Ok(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_part_sizes_r2_refuses() {
        assert_eq!(
            PartPlan::new(MIN_PART - 1, 2),
            Err(PartPlanError::PartSize(MIN_PART - 1))
        );
        assert_eq!(
            PartPlan::new(MAX_PART + 1, 2),
            Err(PartPlanError::PartSize(MAX_PART + 1))
        );
        assert_eq!(
            PartPlan::new(MIN_PART, 0),
            Err(PartPlanError::NoConcurrency)
        );
    }

    #[test]
    fn counts_parts_and_bounds_memory() {
        let plan = PartPlan::new(16 << 20, 4).unwrap();
        assert_eq!(plan.parts_for(0), Ok(1));
        assert_eq!(plan.parts_for(16 << 20), Ok(1));
        assert_eq!(plan.parts_for((16 << 20) + 1), Ok(2));
        assert_eq!(
            plan.parts_for(100 << 30),
            Ok(6400),
            "a 100 GiB dump in 16 MiB parts"
        );
        assert_eq!(plan.memory_bound(), 64 << 20);
        assert_eq!(plan.max_object_size(), 160_000 << 20);
    }

    #[test]
    fn says_which_part_size_a_large_object_needs() {
        let plan = PartPlan::new(MIN_PART, 1).unwrap();
        let err = plan.parts_for(100 << 30).unwrap_err();
        assert!(
            err.to_string()
                .contains("raise the part size to at least 10737419 bytes"),
            "{err}"
        );
    }
}
