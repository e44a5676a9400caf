#!/usr/bin/env bash
# Fetch the Java side into a cache (idempotent; Maven Central via mvn, Flink via PyPI):
#   $COSTREAM_CACHE/flink-job-server-2.62.0/   Beam's Flink 1.19 job server (lib/ + launcher jar)
#   $COSTREAM_CACHE/kafka-4.1.1/lib/            Apache Kafka broker (KRaft)
#   $COSTREAM_CACHE/flink-1.19.3/pyflink/        a Flink 1.19 distribution (FLINK_HOME)
# Versions must match costream.pipelines.flink.config and costream.connectors.broker.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${COSTREAM_CACHE:-$HOME/.cache/costream}
PY=${PYTHON:-python3}
mkdir -p "$CACHE"

copy_deps() {  # pom, destination folder
    local pom=$1 dest=$2
    if [ -f "$dest/.complete" ]; then return; fi
    echo "fetching $(basename "$pom" .pom.xml) jars into $dest (Maven Central)"
    rm -rf "$dest" && mkdir -p "$dest/lib"
    mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$dest/lib"
    touch "$dest/.complete"
}

JS="$CACHE/flink-job-server-2.62.0"
copy_deps deploy/jars/flink-job-server.pom.xml "$JS"
if [ ! -f "$JS/beam-runners-flink-1.19-job-server-2.62.0.jar" ]; then
    "$PY" scripts/make_launcher_jar.py "$JS/beam-runners-flink-1.19-job-server-2.62.0.jar" \
        org.apache.beam.runners.flink.FlinkJobServerDriver "$JS/lib"
fi

copy_deps deploy/jars/kafka.pom.xml "$CACHE/kafka-4.1.1"

FL="$CACHE/flink-1.19.3"
if [ ! -f "$FL/.complete" ]; then
    echo "fetching Flink 1.19.3 (apache-flink + apache-flink-libraries from PyPI, no deps) into $FL"
    rm -rf "$FL"
    "$PY" -m pip install -q --no-deps --target "$FL" apache-flink==1.19.3 apache-flink-libraries==1.19.3
    chmod +x "$FL"/pyflink/bin/*.sh "$FL"/pyflink/bin/flink 2>/dev/null || true
    touch "$FL/.complete"
fi
