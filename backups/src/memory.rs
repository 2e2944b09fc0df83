//! What a backup run or a restore drill holds in memory, in MiB, so that an operator can run
//! them inside one memory budget: the multipart parts in flight (part size × concurrency), the
//! zstd compressor of the chosen level (zstd's own `ZSTD_estimateCStreamSize`, measured with
//! the bundled libzstd 1.5.7 and rounded up), and a fixed allowance for the rest (age's chunk
//! buffers, pipes, the HTTP client's buffers).

use crate::PartPlan;
use crate::crypto::Compress;

/// The zstd compressor's memory per level 1 to 19, MiB (`ZSTD_estimateCStreamSize`).
const ZSTD_COMPRESS_MIB: [u64; 19] = [
    2, 2, 4, 5, 6, 6, 9, 9, 17, 29, 29, 53, 53, 53, 69, 69, 69, 69, 90,
];
/// The zstd decompressor's memory for the largest window levels 1 to 19 use (8 MiB).
const ZSTD_DECOMPRESS_MIB: u64 = 9;
/// Everything else one run holds: age's 64 KiB chunks, pipe and socket buffers, the S3
/// client's request buffers.
pub const RUN_OVERHEAD_MIB: u64 = 4;

/// The compressor's memory at `compress`.
pub fn compressor_mib(compress: Compress) -> u64 {
    match compress {
        Compress::None => 0,
        Compress::Zstd(level) => {
            // Level 0 (and below) is zstd's default, level 3.
            let level = if level < 1 { 3 } else { level.min(19) };
            let i = usize::try_from(level - 1).unwrap_or(0);
            ZSTD_COMPRESS_MIB[i]
        }
    }
}

/// What one backup run (a dump uploaded through the pipeline) holds at most.
pub fn backup_mib(plan: PartPlan, compress: Compress) -> u64 {
    plan.memory_bound().div_ceil(1 << 20) + compressor_mib(compress) + RUN_OVERHEAD_MIB
}

/// What one restore (a drill, or `homeplane restore`) holds at most: the download streams
/// through one decompressor.
pub fn restore_mib() -> u64 {
    ZSTD_DECOMPRESS_MIB + RUN_OVERHEAD_MIB
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_costs_its_parts_its_compressor_and_a_fixed_allowance() {
        let plan = PartPlan::new(16 << 20, 2).unwrap();
        assert_eq!(backup_mib(plan, Compress::Zstd(3)), 32 + 4 + 4);
        assert_eq!(backup_mib(plan, Compress::None), 32 + 4);
        assert_eq!(compressor_mib(Compress::Zstd(19)), 90);
        assert_eq!(
            compressor_mib(Compress::Zstd(0)),
            4,
            "level 0 is zstd's default, 3"
        );
        assert_eq!(restore_mib(), 13);
    }

    #[test]
    fn the_pipelines_sealing_buffers_fit_in_the_fixed_allowance_with_room_to_spare() {
        let sealing =
            crate::crypto::sealing_buffer_bytes(crate::pipeline::PIPELINE_SEALING_THREADS);
        assert!(
            sealing <= (RUN_OVERHEAD_MIB << 20) * 7 / 8,
            "{sealing} bytes of sealing buffers leave too little of {RUN_OVERHEAD_MIB} MiB"
        );
    }
}
