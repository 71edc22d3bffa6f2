"""Versioned ClickHouse migrations. The write path never runs DDL; ``tracehouse migrate`` does.

Each migration is a numbered list of idempotent statements. Applied versions are recorded in
``_tracehouse_migrations``; running ``migrate`` again applies only what is new.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._rebuild import rebuild_table
from ._store import Store

MIGRATIONS_TABLE = "_tracehouse_migrations"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    #: Idempotent data steps run after the statements (a table rebuilt under new settings).
    steps: tuple[Callable[[Store], object], ...] = ()


_PART_BY_MONTH = "PARTITION BY toYYYYMM(fromUnixTimestamp64Milli(timestamp_ms))"

#: trace_tags' physical layout since migration 5. A page of search results hydrates the tags of 100
#: traces scattered over the whole table, one primary-key range each: every range reads a whole
#: granule and whole compressed blocks, so 8192-row granules read ~800 k rows for ~100 wanted
#: (75 ms at 10 M traces; 256-row granules in 8 KiB blocks: 19 ms, same size on disk).
_TAG_LAYOUT = "index_granularity = 256, min_compress_block_size = 8192, max_compress_block_size = 8192"


def _trace_tags(name: str, layout: str = "") -> str:
    """Mutable tags: an upsert log keyed by (trace, key). The newest version wins; a delete is a
    row with is_deleted = 1, which FINAL hides."""
    return f"""
            CREATE TABLE IF NOT EXISTS {name} (
                trace_id String,
                key String,
                value String,
                version UInt64,
                is_deleted UInt8,
                INDEX ix_key key TYPE bloom_filter(0.01) GRANULARITY 1,
                INDEX ix_value value TYPE bloom_filter(0.01) GRANULARITY 1
            ) ENGINE = ReplacingMergeTree(version, is_deleted)
            ORDER BY (trace_id, key)
            SETTINGS non_replicated_deduplication_window = 10000{", " + layout if layout else ""}
            """


def _small_tag_granules(store: Store) -> bool:
    return rebuild_table(store, "trace_tags", lambda name: _trace_tags(name, _TAG_LAYOUT), "index_granularity = 256")

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "traces, spans, tags, assessments and the sink's batch ledger",
        (
            # One row per trace. Identity (user, session) and everything the search grammar filters on
            # most are promoted to typed columns; the raw metadata is kept in a map. A replayed batch is
            # dropped by insert_deduplication_token; a duplicate event of the same trace collapses under
            # ReplacingMergeTree and is hidden from reads by FINAL.
            f"""
            CREATE TABLE IF NOT EXISTS traces (
                trace_id String,
                experiment_id LowCardinality(String),
                client_request_id Nullable(String),
                timestamp_ms Int64,
                execution_time_ms Int64,
                state LowCardinality(String),
                name String,
                user_id String,
                session_id String,
                request_preview String,
                response_preview String,
                metadata Map(LowCardinality(String), String),
                tags Map(LowCardinality(String), String),
                span_count UInt32,
                input_tokens UInt64,
                output_tokens UInt64,
                total_tokens UInt64,
                ingested_at DateTime64(3) DEFAULT now64(3),
                INDEX ix_trace_id trace_id TYPE bloom_filter(0.001) GRANULARITY 1,
                INDEX ix_session session_id TYPE bloom_filter(0.001) GRANULARITY 1,
                INDEX ix_client_request client_request_id TYPE bloom_filter(0.01) GRANULARITY 1,
                INDEX ix_meta_keys mapKeys(metadata) TYPE bloom_filter(0.01) GRANULARITY 1,
                INDEX ix_meta_values mapValues(metadata) TYPE bloom_filter(0.01) GRANULARITY 1
            ) ENGINE = ReplacingMergeTree
            {_PART_BY_MONTH}
            ORDER BY (experiment_id, user_id, timestamp_ms, trace_id)
            SETTINGS non_replicated_deduplication_window = 10000
            """,
            # One row per span, carrying its trace's identity so span-level reads need no join.
            f"""
            CREATE TABLE IF NOT EXISTS spans (
                trace_id String,
                span_id String,
                parent_span_id String,
                experiment_id LowCardinality(String),
                user_id String,
                session_id String,
                timestamp_ms Int64,
                name String,
                span_type LowCardinality(String),
                status LowCardinality(String),
                status_message String,
                start_time_ns Int64,
                end_time_ns Int64,
                attributes Map(LowCardinality(String), String),
                events String,
                INDEX ix_user user_id TYPE bloom_filter(0.001) GRANULARITY 1,
                INDEX ix_session session_id TYPE bloom_filter(0.001) GRANULARITY 1,
                INDEX ix_name name TYPE bloom_filter(0.01) GRANULARITY 1,
                INDEX ix_type span_type TYPE set(64) GRANULARITY 1,
                INDEX ix_attr_keys mapKeys(attributes) TYPE bloom_filter(0.01) GRANULARITY 1
            ) ENGINE = ReplacingMergeTree
            {_PART_BY_MONTH}
            ORDER BY (experiment_id, trace_id, span_id)
            SETTINGS non_replicated_deduplication_window = 10000
            """,
            # Mutable tags: an upsert log keyed by (trace, key). The newest version wins; a delete is a
            # row with is_deleted = 1, which FINAL hides.
            _trace_tags("trace_tags"),
            # Feedback and expectations. value is the JSON value; value_text is the string form the
            # filter grammar compares (strings unquoted, true/false/numbers as JSON).
            """
            CREATE TABLE IF NOT EXISTS assessments (
                assessment_id String,
                trace_id String,
                session_id String,
                name String,
                kind LowCardinality(String),
                value String,
                value_text String,
                source_type LowCardinality(String),
                source_id String,
                rationale Nullable(String),
                valid UInt8,
                metadata Map(String, String),
                create_time_ms Int64,
                version UInt64,
                is_deleted UInt8,
                INDEX ix_name name TYPE bloom_filter(0.01) GRANULARITY 1
            ) ENGINE = ReplacingMergeTree(version, is_deleted)
            ORDER BY (trace_id, assessment_id)
            SETTINGS non_replicated_deduplication_window = 10000
            """,
            # The sink's ledger: which offsets each batch covered, written before the batch's inserts,
            # so a batch replayed after a crash is rebuilt with the same bounds and the same
            # deduplication token.
            """
            CREATE TABLE IF NOT EXISTS _sink_batches (
                consumer_group String,
                topic String,
                partition UInt32,
                first_offset Int64,
                last_offset Int64,
                created_at DateTime64(3) DEFAULT now64(3)
            ) ENGINE = ReplacingMergeTree
            ORDER BY (consumer_group, topic, partition, first_offset)
            TTL toDateTime(created_at) + INTERVAL 7 DAY
            """,
        ),
    ),
    Migration(
        2,
        "sessions: the newest record of each session from the sessionizer",
        (
            # One row per (session, version) as the sessionizer emits them on sessions.v1; the highest
            # version collapses the others under ReplacingMergeTree(version), and reads use FINAL. A
            # replayed batch is dropped by insert_deduplication_token, and a replayed record of the
            # same version is harmless. user_id is the first of user_ids ('' if none).
            """
            CREATE TABLE IF NOT EXISTS sessions (
                session_id String,
                experiment_id LowCardinality(String),
                user_id String,
                user_ids Array(String),
                first_ms Int64,
                last_ms Int64,
                last_end_ms Int64,
                turns UInt64,
                error_turns UInt64,
                total_duration_ms UInt64,
                first_request_preview String,
                last_response_preview String,
                input_tokens UInt64,
                output_tokens UInt64,
                total_tokens UInt64,
                status LowCardinality(String),
                inferred UInt8,
                version UInt64,
                ingested_at DateTime64(3) DEFAULT now64(3),
                INDEX ix_user user_id TYPE bloom_filter(0.001) GRANULARITY 1,
                INDEX ix_user_ids user_ids TYPE bloom_filter(0.01) GRANULARITY 1
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY (experiment_id, session_id)
            SETTINGS non_replicated_deduplication_window = 10000
            """,
        ),
    ),
    Migration(
        3,
        "per-user rollups: daily aggregate states fed by user_trace facts, and the sink's source marks",
        (
            # The sink inserts one row per user_trace fact here; nothing is stored (Null engine): the
            # materialized view below folds each inserted block into aggregate-state deltas.
            """
            CREATE TABLE IF NOT EXISTS user_trace_facts (
                experiment_id LowCardinality(String),
                user_id String,
                day Date32,
                trace_id String,
                session_id String,
                timestamp_ms Int64,
                execution_time_ms Int64,
                error UInt8,
                input_tokens UInt64,
                output_tokens UInt64,
                total_tokens UInt64
            ) ENGINE = Null
            """,
            # One row per (experiment, user, day) per inserted block: deltas that merge exactly, across
            # days, experiments and workers. Sessions are an exact set, response times the exact
            # multiset (so p50/p95 are exact), the rest sums and min/max. Read with the -Merge
            # combinators, GROUP BY the key (see tracehouse.query). A replayed block carries the same
            # insert_deduplication_token and is dropped (the view's blocks too).
            """
            CREATE TABLE IF NOT EXISTS user_rollups_daily (
                experiment_id LowCardinality(String),
                user_id String,
                day Date32,
                interactions SimpleAggregateFunction(sum, UInt64),
                error_count SimpleAggregateFunction(sum, UInt64),
                total_duration_ms SimpleAggregateFunction(sum, UInt64),
                sessions AggregateFunction(uniqExact, String),
                durations AggregateFunction(quantilesExactInclusive(0.5, 0.95), Int64),
                first_seen_ms SimpleAggregateFunction(min, Int64),
                last_seen_ms SimpleAggregateFunction(max, Int64),
                input_tokens SimpleAggregateFunction(sum, UInt64),
                output_tokens SimpleAggregateFunction(sum, UInt64),
                total_tokens SimpleAggregateFunction(sum, UInt64)
            ) ENGINE = AggregatingMergeTree
            PARTITION BY toYYYYMM(day)
            ORDER BY (user_id, day, experiment_id)
            SETTINGS non_replicated_deduplication_window = 10000
            """,
            """
            CREATE MATERIALIZED VIEW IF NOT EXISTS user_rollups_daily_mv TO user_rollups_daily AS
            SELECT
                experiment_id, user_id, day,
                toUInt64(count()) AS interactions,
                toUInt64(sum(error)) AS error_count,
                toUInt64(sum(execution_time_ms)) AS total_duration_ms,
                uniqExactStateIf(session_id, session_id != '') AS sessions,
                quantilesExactInclusiveState(0.5, 0.95)(execution_time_ms) AS durations,
                min(timestamp_ms) AS first_seen_ms,
                max(timestamp_ms) AS last_seen_ms,
                sum(input_tokens) AS input_tokens,
                sum(output_tokens) AS output_tokens,
                sum(total_tokens) AS total_tokens
            FROM user_trace_facts
            GROUP BY experiment_id, user_id, day
            """,
            # The highest (offset, line) of each traces.v1 partition whose facts the sink applied to a
            # user-rollups.v1 partition; facts at or below it are replays and are skipped. Written after
            # each batch's rows, so a mark never passes rows that are not stored. One row per source
            # partition once merged (the highest mark wins); reads take max() so unmerged rows are fine.
            """
            CREATE TABLE IF NOT EXISTS _rollup_marks (
                consumer_group String,
                topic String,
                partition UInt32,
                src_partition UInt32,
                src_offset Int64,
                src_line UInt32,
                mark UInt64 MATERIALIZED toUInt64(src_offset) * 1000000 + src_line,
                created_at DateTime64(3) DEFAULT now64(3)
            ) ENGINE = ReplacingMergeTree(mark)
            ORDER BY (consumer_group, topic, partition, src_partition)
            """,
        ),
    ),
    Migration(
        4,
        "experiments (MLflow's create / get / get-by-name)",
        (
            # Written by the HTTP server directly (experiments are rare control-plane records). An
            # experiment's id is derived from its name, so two servers creating the same name at once
            # write the same row; the newest update wins.
            """
            CREATE TABLE IF NOT EXISTS experiments (
                experiment_id String,
                name String,
                artifact_location String,
                lifecycle_stage LowCardinality(String),
                creation_time Int64,
                last_update_time Int64,
                tags Map(String, String),
                INDEX ix_name name TYPE bloom_filter(0.01) GRANULARITY 1
            ) ENGINE = ReplacingMergeTree(last_update_time)
            ORDER BY experiment_id
            """,
        ),
    ),
    Migration(
        5,
        "trace_tags in 256-row granules: hydrating a page of scattered traces reads 32x fewer rows",
        (),
        # A rebuild (index_granularity cannot be altered) that keeps rows written meanwhile.
        steps=(_small_tag_granules,),
    ),
    Migration(
        6,
        "what recovery needs: session records that can be reloaded, rollup buckets that can be recomputed, "
        "and tracehouse's own state (the broker epoch, the last consistent point)",
        (
            # A closed record carries the hashes of its traces, so a sessionizer that evicted the session
            # (or restarted on an empty broker) reloads it exactly; first/last trace ids break ties in time.
            # Where the sink read each trace (the envelope's offset in its traces.v1 partition, in the epoch
            # it was ingested in): a sessionizer reloading a session counts only what it already folded.
            "ALTER TABLE traces ADD COLUMN IF NOT EXISTS src_offset Int64 DEFAULT -1",
            "ALTER TABLE sessions ADD COLUMN IF NOT EXISTS first_trace_id String DEFAULT ''",
            "ALTER TABLE sessions ADD COLUMN IF NOT EXISTS last_trace_id String DEFAULT ''",
            "ALTER TABLE sessions ADD COLUMN IF NOT EXISTS trace_hashes String DEFAULT '' CODEC(ZSTD(1))",
            # When a bucket last changed (the view leaves it to the default): reconciliation after a crash
            # recomputes the buckets changed since the last consistent point.
            "ALTER TABLE user_rollups_daily ADD COLUMN IF NOT EXISTS "
            "updated_at SimpleAggregateFunction(max, DateTime64(3)) DEFAULT now64(3)",
            # Small key/value records: the broker epoch the store was last fed from, the time up to which
            # sessions and rollups are known to equal the stored traces. Newest version wins.
            """
            CREATE TABLE IF NOT EXISTS _tracehouse_state (
                key String,
                value String,
                version UInt64,
                updated_at DateTime64(3) DEFAULT now64(3)
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY key
            """,
        ),
    ),
    Migration(
        7,
        "SDK heartbeats: each app process's published and dropped counts, for tracehouse status",
        (
            # The newest report of a process wins; a process gone quiet for a month is forgotten.
            """
            CREATE TABLE IF NOT EXISTS sdk_heartbeats (
                process_id String,
                time_ms Int64,
                accepted UInt64,
                published UInt64,
                dropped UInt64,
                failed UInt64,
                buffered UInt64,
                service String,
                sdk_version LowCardinality(String)
            ) ENGINE = ReplacingMergeTree(time_ms)
            ORDER BY process_id
            TTL toDateTime(intDiv(time_ms, 1000)) + INTERVAL 30 DAY
            """,
        ),
    ),
)


def applied_versions(store: Store) -> set[int]:
    store.command(
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} "
        "(version UInt32, name String, applied_at DateTime64(3) DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    return {int(r[0]) for r in store.query(f"SELECT version FROM {MIGRATIONS_TABLE} FINAL")}


def migrate(store: Store, upto: int | None = None) -> list[Migration]:
    """Apply every migration not yet applied (up to version ``upto``, if given), in order. Returns
    those applied now."""
    done = applied_versions(store)
    applied: list[Migration] = []
    for migration in MIGRATIONS:
        if migration.version in done or (upto is not None and migration.version > upto):
            continue
        for statement in migration.statements:
            store.command(statement)
        for step in migration.steps:
            step(store)
        store.insert(MIGRATIONS_TABLE, [(migration.version, migration.name)], ["version", "name"])
        applied.append(migration)
    return applied


def current_version(store: Store) -> int:
    return max(applied_versions(store), default=0)


def latest_version() -> int:
    return MIGRATIONS[-1].version
