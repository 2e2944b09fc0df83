#!/usr/bin/env bash
# Builds bench/flyway (Flyway 13.12.1 driven by a few lines of Java) with Maven, its repository
# under the homeplane cache, once per version of its files; prints the Java class path that
# runs it (`java -cp PATH Migrate JDBC_URL USER PASSWORD DIR`).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
src="$HOMEPLANE_ROOT/bench/flyway"
out="$HOMEPLANE_CACHE/tools/flyway-$(cache_key "$src/pom.xml" "$src/src/main/java/Migrate.java")"
if [ ! -f "$out/.complete" ]; then
  command -v mvn >/dev/null && command -v java >/dev/null || die "Maven and Java 17 are needed (apt-get install maven openjdk-17-jdk-headless)"
  log "building Flyway's runner with Maven (first time only)"
  rm -rf "$out" && mkdir -p "$out"
  cp -r "$src/pom.xml" "$src/src" "$out/"
  (cd "$out" && mvn -q -B -Dmaven.repo.local="$HOMEPLANE_CACHE/m2" compile dependency:copy-dependencies \
    -DoutputDirectory="$out/lib" >&2)
  touch "$out/.complete"
fi
echo "$out/target/classes:$out/lib/*"
