#!/usr/bin/env bash
# RUSTC_WRAPPER of scripts/fuzz.sh: adds libFuzzer's coverage instrumentation (LLVM
# SanitizerCoverage through stable rustc codegen options) and `--cfg fuzzing` to homeplane's
# own crates and the fuzz targets; every other crate builds unchanged.
rustc="$1"; shift
case " $* " in
  *" --crate-name homeplane_"*|*"fuzz_targets/"*)
    exec "$rustc" "$@" \
      -Cpasses=sancov-module \
      -Cllvm-args=-sanitizer-coverage-level=4 \
      -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
      -Cllvm-args=-sanitizer-coverage-pc-table \
      -Cllvm-args=-sanitizer-coverage-trace-compares \
      --cfg fuzzing ;;
  *) exec "$rustc" "$@" ;;
esac
