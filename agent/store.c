/*
 * store.c - the agent's SQLite store; the only file in Outpost that contains SQL.
 *
 * Durability: the database runs in WAL mode with synchronous=NORMAL, so a
 * crash or power cut can lose the last few commits but never corrupts the
 * file or a committed row. Every change is one transaction; a write that
 * fails half-way (disk full, I/O error, size cap) is rolled back before the
 * call returns, so what callers saw committed stays as it was. Changes of more
 * than one statement start with BEGIN IMMEDIATE: taking the write lock up
 * front means a writer waits in the busy handler instead of failing with
 * SQLITE_BUSY when its read snapshot goes stale under another writer.
 *
 * Threads: one handle may be used from many threads. Its mutex is held for
 * the whole of each public call, because the prepared statements cached in
 * the handle, the open transaction and sqlite3_errmsg() are per connection
 * state that only one thread may drive at a time; the connection itself is
 * also opened in SQLite's serialized mode as a second line of defence. The
 * only caller code run under the mutex is the clock (store_opts.now_ms),
 * which must not call back into the store. Separate handles on the same file
 * serialize their writes through SQLite's locks and the busy timeout.
 *
 * Schema: versioned by PRAGMA user_version; `migrations` below holds one step
 * per version, each applied in its own transaction. Values from callers only
 * ever reach SQL as bound parameters; the only SQL assembled at run time is
 * "PRAGMA user_version|max_page_count|journal_size_limit = <our own integer>".
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* Rows one retention transaction deletes at most: short enough that the HTTP
 * threads waiting on the mutex or the write lock do not notice it. */
#define PRUNE_BATCH 256

/* The cap on the WAL file after a checkpoint, so the log does not keep the
 * size of its largest burst on a small disk. */
#define WAL_SIZE_LIMIT_BYTES (4 << 20)

#define DEFAULT_BUSY_TIMEOUT_MS 5000

/* STRICT tables need 3.37, RETURNING needs 3.35. */
#define SQLITE_MIN_VERSION 3037000

/* ---- schema -------------------------------------------------------------- */

typedef struct migration {
    int version;
    const char *what;
    const char *sql;
} migration;

/* Steps in the order the features landed; never edit a step that shipped,
 * add a new one. Step 4 alters an existing table, so the upgrade path of a
 * populated database is exercised by the tests from the start. */
static const migration migrations[] = {
    {1, "sessions, messages and settings",
     "CREATE TABLE sessions ("
     " id TEXT PRIMARY KEY NOT NULL,"
     " owner_uid INTEGER NOT NULL,"
     " model TEXT NOT NULL,"
     " title TEXT,"
     " created_ms INTEGER NOT NULL,"
     " updated_ms INTEGER NOT NULL,"
     " last_used_ms INTEGER NOT NULL"
     ") STRICT;"
     "CREATE INDEX sessions_by_owner ON sessions(owner_uid, last_used_ms);"
     "CREATE INDEX sessions_by_use ON sessions(last_used_ms);"
     "CREATE TABLE messages ("
     " session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,"
     " seq INTEGER NOT NULL,"
     " role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),"
     " content TEXT NOT NULL,"
     " n_tokens INTEGER NOT NULL CHECK (n_tokens >= 0),"
     " created_ms INTEGER NOT NULL,"
     " PRIMARY KEY (session_id, seq)"
     ") STRICT;"
     "CREATE TABLE settings ("
     " key TEXT PRIMARY KEY NOT NULL,"
     " value TEXT NOT NULL"
     ") STRICT;"},
    {2, "request telemetry",
     "CREATE TABLE requests ("
     " id TEXT PRIMARY KEY NOT NULL,"
     " session_id TEXT,"
     " route TEXT NOT NULL CHECK (route IN ('local', 'peer', 'cloud')),"
     " reason TEXT NOT NULL,"
     " model TEXT NOT NULL,"
     " prompt_tokens INTEGER NOT NULL,"
     " completion_tokens INTEGER NOT NULL,"
     " cached_tokens INTEGER NOT NULL,"
     " ttft_ms REAL,"
     " decode_tok_s REAL,"
     " token_p50_ms REAL,"
     " token_p95_ms REAL,"
     " cost_usd REAL NOT NULL,"
     " status TEXT NOT NULL,"
     " created_ms INTEGER NOT NULL"
     ") STRICT;"
     "CREATE INDEX requests_by_time ON requests(created_ms);"},
    /* AUTOINCREMENT: an id is never handed out twice, so a late ack for a
       message that was pruned cannot mark a newer one as sent. */
    {3, "fleet outbox",
     "CREATE TABLE outbox ("
     " id INTEGER PRIMARY KEY AUTOINCREMENT,"
     " topic TEXT NOT NULL,"
     " payload BLOB NOT NULL,"
     " created_ms INTEGER NOT NULL,"
     " attempts INTEGER NOT NULL DEFAULT 0,"
     " sent INTEGER NOT NULL DEFAULT 0 CHECK (sent IN (0, 1))"
     ") STRICT;"
     "CREATE INDEX outbox_by_state ON outbox(sent, id);"},
    {4, "saved KV state of sessions",
     "ALTER TABLE sessions ADD COLUMN kv_path TEXT;"
     "ALTER TABLE sessions ADD COLUMN kv_tokens INTEGER NOT NULL DEFAULT 0;"
     "ALTER TABLE sessions ADD COLUMN kv_bytes INTEGER NOT NULL DEFAULT 0;"
     "CREATE INDEX sessions_with_kv ON sessions(last_used_ms) WHERE kv_path IS NOT NULL;"},
    /* kind: 0 a record (request, event), 1 a roll-up (dropped first when the
       outbox is over its bound). exported: 0 until the fleet channel copied
       the request into the outbox; rows already there at the upgrade count
       as exported, so turning the fleet on does not flood it with history. */
    {5, "fleet telemetry export",
     "ALTER TABLE outbox ADD COLUMN kind INTEGER NOT NULL DEFAULT 0 CHECK (kind IN (0, 1));"
     "ALTER TABLE requests ADD COLUMN exported INTEGER NOT NULL DEFAULT 0"
     " CHECK (exported IN (0, 1));"
     "UPDATE requests SET exported = 1;"
     "CREATE INDEX requests_to_export ON requests(exported) WHERE exported = 0;"},
    /* Commands from the fleet, stored before the broker gets its PUBACK and
       deleted when the command was accepted or refused; attempts counts how
       often the fleet thread took it up (a command that kills the agent every
       time is dropped after a few). */
    {6, "fleet command inbox",
     "CREATE TABLE inbox ("
     " id INTEGER PRIMARY KEY AUTOINCREMENT,"
     " topic TEXT NOT NULL,"
     " payload BLOB NOT NULL,"
     " created_ms INTEGER NOT NULL,"
     " attempts INTEGER NOT NULL DEFAULT 0"
     ") STRICT;"},
};

#define N_MIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))

/* ---- statements ---------------------------------------------------------- */

enum stmt_id {
    ST_BEGIN_READ,
    ST_BEGIN_WRITE,
    ST_COMMIT,
    ST_SESSION_INSERT,
    ST_SESSION_GET,
    ST_SESSION_LIST,
    ST_SESSION_DELETE,
    ST_SESSION_OWNED,
    ST_SESSION_TOUCH,
    ST_SESSION_SET_KV,
    ST_SESSIONS_LRU,
    ST_KV_USAGE,
    ST_MESSAGE_INSERT,
    ST_MESSAGES_LOAD,
    ST_REQUEST_INSERT,
    ST_ROLLUP_GROUPS,
    ST_ROLLUP_TTFT_COUNT,
    ST_ROLLUP_TTFT_AT,
    ST_REQUESTS_COST,
    ST_PRUNE_REQUESTS_AGE,
    ST_REQUESTS_COUNT,
    ST_PRUNE_REQUESTS_OLDEST,
    ST_PRUNE_SESSIONS_IDLE,
    ST_PRUNE_OUTBOX_SENT,
    ST_INCREMENTAL_VACUUM,
    ST_SETTING_SET,
    ST_SETTING_GET,
    ST_SETTING_DELETE,
    ST_OUTBOX_PUT,
    ST_OUTBOX_PEEK,
    ST_OUTBOX_ACK,
    ST_OUTBOX_PENDING,
    ST_OUTBOX_PUT_KIND,
    ST_OUTBOX_DROP_KIND,
    ST_OUTBOX_DROP_NOT_KIND,
    ST_OUTBOX_PEEK_AFTER,
    ST_REQUESTS_TO_EXPORT,
    ST_REQUEST_EXPORTED,
    ST_INBOX_PUT,
    ST_INBOX_PEEK,
    ST_INBOX_DELETE,
    ST_COUNT
};

#define SESSION_COLUMNS                                                                    \
    "id, owner_uid, model, coalesce(title, ''), created_ms, updated_ms, last_used_ms,"     \
    " (SELECT count(*) FROM messages m WHERE m.session_id = sessions.id),"                 \
    " coalesce(kv_path, ''), kv_tokens, kv_bytes"

/* Retention statements all take ?1 = cutoff (some ignore it), ?2 = row limit. */
static const struct {
    const char *name;
    const char *sql;
} stmts[ST_COUNT] = {
    [ST_BEGIN_READ] = {"begin", "BEGIN"},
    [ST_BEGIN_WRITE] = {"begin", "BEGIN IMMEDIATE"},
    [ST_COMMIT] = {"commit", "COMMIT"},
    [ST_SESSION_INSERT] = {"create session",
        "INSERT INTO sessions(id, owner_uid, model, title, created_ms, updated_ms, last_used_ms)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5)"},
    [ST_SESSION_GET] = {"read session",
        "SELECT " SESSION_COLUMNS " FROM sessions WHERE id = ?1 AND owner_uid = ?2"},
    [ST_SESSION_LIST] = {"list sessions",
        "SELECT " SESSION_COLUMNS " FROM sessions WHERE owner_uid = ?1"
        " ORDER BY last_used_ms DESC, id LIMIT ?2"},
    [ST_SESSION_DELETE] = {"delete session",
        "DELETE FROM sessions WHERE id = ?1 AND owner_uid = ?2"},
    [ST_SESSION_OWNED] = {"read session",
        "SELECT 1 FROM sessions WHERE id = ?1 AND owner_uid = ?2"},
    [ST_SESSION_TOUCH] = {"mark session used",
        "UPDATE sessions SET updated_ms = ?2, last_used_ms = ?2 WHERE id = ?1"},
    [ST_SESSION_SET_KV] = {"record session KV state",
        "UPDATE sessions SET kv_path = ?2, kv_tokens = ?3, kv_bytes = ?4 WHERE id = ?1"},
    [ST_SESSIONS_LRU] = {"list saved KV states",
        "SELECT id, kv_path, kv_tokens, kv_bytes, last_used_ms FROM sessions"
        " WHERE kv_path IS NOT NULL ORDER BY last_used_ms, id LIMIT ?1"},
    [ST_KV_USAGE] = {"sum saved KV states",
        "SELECT count(*), total(kv_bytes) FROM sessions WHERE kv_path IS NOT NULL"},
    /* The ownership check and the next seq are part of the insert itself. */
    [ST_MESSAGE_INSERT] = {"append message",
        "INSERT INTO messages(session_id, seq, role, content, n_tokens, created_ms)"
        " SELECT id, (SELECT coalesce(max(seq), 0) + 1 FROM messages WHERE session_id = ?1),"
        " ?3, ?4, ?5, ?6 FROM sessions WHERE id = ?1 AND owner_uid = ?2 RETURNING seq"},
    [ST_MESSAGES_LOAD] = {"load messages",
        "SELECT seq, role, content, n_tokens, created_ms FROM messages"
        " WHERE session_id = ?1 ORDER BY seq"},
    [ST_REQUEST_INSERT] = {"record request",
        "INSERT INTO requests(id, session_id, route, reason, model, prompt_tokens,"
        " completion_tokens, cached_tokens, ttft_ms, decode_tok_s, token_p50_ms, token_p95_ms,"
        " cost_usd, status, created_ms)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"},
    [ST_ROLLUP_GROUPS] = {"roll up requests",
        "SELECT route, status, count(*), coalesce(sum(prompt_tokens), 0),"
        " coalesce(sum(completion_tokens), 0), coalesce(sum(cached_tokens), 0), total(cost_usd)"
        " FROM requests WHERE created_ms >= ?1 GROUP BY route, status"
        " ORDER BY count(*) DESC, route, status"},
    [ST_ROLLUP_TTFT_COUNT] = {"roll up requests",
        "SELECT count(ttft_ms), avg(decode_tok_s) FROM requests WHERE created_ms >= ?1"},
    [ST_ROLLUP_TTFT_AT] = {"roll up requests",
        "SELECT ttft_ms FROM requests WHERE created_ms >= ?1 AND ttft_ms IS NOT NULL"
        " ORDER BY ttft_ms LIMIT 1 OFFSET ?2"},
    [ST_REQUESTS_COST] = {"sum request costs",
        "SELECT total(cost_usd) FROM requests WHERE created_ms >= ?1 AND route = ?2"},
    [ST_PRUNE_REQUESTS_AGE] = {"prune old requests",
        "DELETE FROM requests WHERE rowid IN"
        " (SELECT rowid FROM requests WHERE created_ms < ?1 LIMIT ?2)"},
    [ST_REQUESTS_COUNT] = {"count requests", "SELECT count(*) FROM requests"},
    [ST_PRUNE_REQUESTS_OLDEST] = {"prune requests over the cap",
        "DELETE FROM requests WHERE rowid IN"
        " (SELECT rowid FROM requests ORDER BY created_ms, rowid LIMIT ?2)"},
    [ST_PRUNE_SESSIONS_IDLE] = {"prune idle sessions",
        "DELETE FROM sessions WHERE id IN"
        " (SELECT id FROM sessions WHERE last_used_ms < ?1 ORDER BY last_used_ms LIMIT ?2)"
        " RETURNING kv_path"},
    [ST_PRUNE_OUTBOX_SENT] = {"prune sent outbox messages",
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE sent = 1 ORDER BY id LIMIT ?2)"},
    [ST_INCREMENTAL_VACUUM] = {"return free pages", "PRAGMA incremental_vacuum"},
    [ST_SETTING_SET] = {"write setting",
        "INSERT INTO settings(key, value) VALUES (?1, ?2)"
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value"},
    [ST_SETTING_GET] = {"read setting", "SELECT value FROM settings WHERE key = ?1"},
    [ST_SETTING_DELETE] = {"delete setting", "DELETE FROM settings WHERE key = ?1"},
    [ST_OUTBOX_PUT] = {"queue outbox message",
        "INSERT INTO outbox(topic, payload, created_ms) VALUES (?1, ?2, ?3)"},
    [ST_OUTBOX_PEEK] = {"peek outbox",
        "UPDATE outbox SET attempts = attempts + 1 WHERE id IN"
        " (SELECT id FROM outbox WHERE sent = 0 ORDER BY id LIMIT ?1)"
        " RETURNING id, topic, payload, created_ms, attempts"},
    [ST_OUTBOX_ACK] = {"acknowledge outbox message",
        "UPDATE outbox SET sent = 1 WHERE id = ?1 AND sent = 0"},
    [ST_OUTBOX_PENDING] = {"count outbox", "SELECT count(*) FROM outbox WHERE sent = 0"},
    [ST_OUTBOX_PUT_KIND] = {"queue outbox message",
        "INSERT INTO outbox(topic, payload, created_ms, kind) VALUES (?1, ?2, ?3, ?4)"},
    [ST_OUTBOX_DROP_KIND] = {"drop outbox messages over the bound",
        "DELETE FROM outbox WHERE id IN"
        " (SELECT id FROM outbox WHERE sent = 0 AND kind = ?1 ORDER BY id LIMIT ?2)"},
    [ST_OUTBOX_DROP_NOT_KIND] = {"drop outbox messages over the bound",
        "DELETE FROM outbox WHERE id IN"
        " (SELECT id FROM outbox WHERE sent = 0 AND kind <> ?1 ORDER BY id LIMIT ?2)"},
    [ST_OUTBOX_PEEK_AFTER] = {"peek outbox",
        "UPDATE outbox SET attempts = attempts + 1 WHERE id IN"
        " (SELECT id FROM outbox WHERE sent = 0 AND id > ?1 ORDER BY id LIMIT ?2)"
        " RETURNING id, topic, payload, created_ms, attempts"},
    [ST_REQUESTS_TO_EXPORT] = {"read requests to export",
        "SELECT rowid, id, coalesce(session_id, ''), route, reason, model, prompt_tokens,"
        " completion_tokens, cached_tokens, ttft_ms, decode_tok_s, token_p50_ms, token_p95_ms,"
        " cost_usd, status, created_ms FROM requests WHERE exported = 0 ORDER BY rowid LIMIT ?1"},
    [ST_REQUEST_EXPORTED] = {"mark request exported",
        "UPDATE requests SET exported = 1 WHERE rowid = ?1"},
    /* The bound is part of the insert: no row is added to a full inbox. */
    [ST_INBOX_PUT] = {"store fleet command",
        "INSERT INTO inbox(topic, payload, created_ms) SELECT ?1, ?2, ?3"
        " WHERE (SELECT count(*) FROM inbox) < ?4"},
    [ST_INBOX_PEEK] = {"read fleet commands",
        "UPDATE inbox SET attempts = attempts + 1 WHERE id IN"
        " (SELECT id FROM inbox ORDER BY id LIMIT ?1)"
        " RETURNING id, topic, payload, created_ms, attempts"},
    [ST_INBOX_DELETE] = {"delete fleet command", "DELETE FROM inbox WHERE id = ?1"},
};

struct store {
    sqlite3 *db;
    pthread_mutex_t mu;
    sqlite3_stmt *stmt[ST_COUNT];
    char *path;
    int version;
    int64_t max_db_bytes;
    int64_t (*now_ms)(void *ctx);
    void *now_ctx;
};

static const char *const role_names[STORE_ROLE_COUNT] = {"system", "user", "assistant", "tool"};
static const char *const route_names[STORE_ROUTE_COUNT] = {"local", "peer", "cloud"};

const char *store_role_name(store_role r)
{
    return (unsigned)r < STORE_ROLE_COUNT ? role_names[r] : NULL;
}

const char *store_route_name(store_route r)
{
    return (unsigned)r < STORE_ROUTE_COUNT ? route_names[r] : NULL;
}

static int role_parse(const char *name, store_role *out)
{
    for (int i = 0; name && i < STORE_ROLE_COUNT; i++)
        if (strcmp(name, role_names[i]) == 0) {
            *out = (store_role)i;
            return 0;
        }
    return -1;
}

static int route_parse(const char *name, store_route *out)
{
    for (int i = 0; name && i < STORE_ROUTE_COUNT; i++)
        if (strcmp(name, route_names[i]) == 0) {
            *out = (store_route)i;
            return 0;
        }
    return -1;
}

int store_schema_version(void)
{
    return migrations[N_MIGRATIONS - 1].version;
}

int store_user_version(store *s)
{
    return s->version;
}

/* ---- errors and helpers -------------------------------------------------- */

static int map_rc(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_FULL:
        return STORE_EFULL;
    case SQLITE_NOMEM:
        return STORE_ENOMEM;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return STORE_EBUSY;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return STORE_ECORRUPT;
    case SQLITE_CONSTRAINT:
        if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE)
            return STORE_EEXIST;
        return STORE_EINVAL;
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
    case SQLITE_MISMATCH:
        return STORE_EINVAL;
    default:
        return STORE_EIO;
    }
}

/* Writes "<db path>: <what>: <SQLite's message>[hint]" and returns the store
 * code for rc. Must run right after the failing call, before anything else
 * on the connection replaces the message. */
static int db_fail(store *s, char err[256], const char *what, int rc)
{
    const char *msg = s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc);
    const char *hint = "";
    char capbuf[128];
    switch (rc & 0xff) {
    case SQLITE_FULL:
        if (s->max_db_bytes > 0) {
            snprintf(capbuf, sizeof capbuf,
                     " (the database is at its cap of %" PRId64 " bytes, or the disk is full;"
                     " the change was rolled back, committed data is intact)",
                     s->max_db_bytes);
            hint = capbuf;
        } else {
            hint = " (the disk is full; the change was rolled back, committed data is intact)";
        }
        break;
    case SQLITE_IOERR:
        hint = " (I/O error; the change was rolled back)";
        break;
    case SQLITE_BUSY:
        hint = " (another writer held the database past the busy timeout)";
        break;
    default:
        break;
    }
    snprintf(err, 256, "%s: %s: %s%s", s->path, what, msg, hint);
    return map_rc(rc);
}

static int64_t real_now_ms(void *ctx)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_ms(store *s)
{
    return s->now_ms(s->now_ctx);
}

/* Offset of the first byte that breaks well-formed UTF-8 as RFC 3629 defines
 * it (no overlong forms, no UTF-16 surrogates, nothing above U+10FFFF), or of
 * the first NUL; len when there is neither. */
static size_t utf8_bad_at(const unsigned char *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        if (c == 0)
            return i;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp, min;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2, cp = c & 0x0f, min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return i;
        }
        if (len - i <= n)
            return i;
        for (size_t k = 1; k <= n; k++) {
            unsigned cc = p[i + k];
            if ((cc & 0xc0) != 0x80)
                return i;
            cp = (cp << 6) | (cc & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return i;
        i += n + 1;
    }
    return len;
}

/* Text the store keeps must be UTF-8 without NULs (SQLite's text functions
 * and every consumer downstream assume both) and within its limit. */
static int check_text(char err[256], const char *field, const char *str, size_t len,
                      size_t max, bool may_be_empty)
{
    if (!str) {
        snprintf(err, 256, "store: %s is missing", field);
        return STORE_EINVAL;
    }
    if (len == 0 && !may_be_empty) {
        snprintf(err, 256, "store: %s is empty", field);
        return STORE_EINVAL;
    }
    if (len > max) {
        snprintf(err, 256, "store: %s is %zu bytes, the limit is %zu", field, len, max);
        return STORE_EINVAL;
    }
    size_t bad = utf8_bad_at((const unsigned char *)str, len);
    if (bad < len) {
        if (str[bad] == '\0')
            snprintf(err, 256, "store: %s contains a NUL byte at offset %zu (it must be text)",
                     field, bad);
        else
            snprintf(err, 256, "store: %s is not valid UTF-8 at offset %zu (byte 0x%02x)", field,
                     bad, (unsigned char)str[bad]);
        return STORE_EINVAL;
    }
    return 0;
}

static int check_cstr(char err[256], const char *field, const char *str, size_t max,
                      bool may_be_empty)
{
    return check_text(err, field, str, str ? strlen(str) : 0, max, may_be_empty);
}

static void lock(store *s)
{
    pthread_mutex_lock(&s->mu);
}

static void unlock(store *s)
{
    pthread_mutex_unlock(&s->mu);
}

/* The cached statement, prepared on first use: a handle opened at an older
 * schema version (tests of migrations) never prepares what it cannot run. */
static int stmt_get(store *s, enum stmt_id id, sqlite3_stmt **out, char err[256])
{
    if (!s->stmt[id]) {
        int rc = sqlite3_prepare_v3(s->db, stmts[id].sql, -1, SQLITE_PREPARE_PERSISTENT,
                                    &s->stmt[id], NULL);
        if (rc != SQLITE_OK) {
            s->stmt[id] = NULL;
            return db_fail(s, err, stmts[id].name, rc);
        }
    }
    *out = s->stmt[id];
    return 0;
}

/* Releases the statement's read snapshot and the caller's buffers it points at. */
static void stmt_done(sqlite3_stmt *st)
{
    if (st) {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
}

/* Runs a statement that returns no rows the caller wants. */
static int run(store *s, enum stmt_id id, sqlite3_stmt *st, char err[256])
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        ;
    if (rc != SQLITE_DONE)
        rc = db_fail(s, err, stmts[id].name, rc);
    else
        rc = 0;
    stmt_done(st);
    return rc;
}

static int exec_id(store *s, enum stmt_id id, char err[256])
{
    sqlite3_stmt *st = NULL;
    int rc = stmt_get(s, id, &st, err);
    return rc ? rc : run(s, id, st, err);
}

static int tx_begin(store *s, bool write, char err[256])
{
    return exec_id(s, write ? ST_BEGIN_WRITE : ST_BEGIN_READ, err);
}

static int tx_commit(store *s, char err[256])
{
    return exec_id(s, ST_COMMIT, err);
}

/* After a failure inside a transaction. SQLite may already have rolled back
 * on its own (it does for some disk-full and I/O errors), hence the check. */
static void tx_rollback(store *s, char err[256])
{
    if (sqlite3_get_autocommit(s->db))
        return;
    int rc = sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        size_t used = strnlen(err, 256);
        if (used < 255)
            snprintf(err + used, 256 - used, " (rollback also failed: %s)",
                     sqlite3_errmsg(s->db));
    }
}

/* Copies a text column into a fixed buffer. A NULL pointer for a non-NULL
 * value means SQLite ran out of memory converting it. */
static int col_text(store *s, sqlite3_stmt *st, int col, char *dst, size_t cap, char err[256])
{
    const unsigned char *t = sqlite3_column_text(st, col);
    if (!t) {
        dst[0] = '\0';
        if (sqlite3_column_type(st, col) == SQLITE_NULL)
            return 0;
        snprintf(err, 256, "%s: out of memory reading a column", s->path);
        return STORE_ENOMEM;
    }
    size_t n = (size_t)sqlite3_column_bytes(st, col);
    if (n > cap - 1)
        n = cap - 1;
    memcpy(dst, t, n);
    dst[n] = '\0';
    return 0;
}

/* A malloc'd copy of a text or blob column with a NUL after its bytes (the
 * length in *len), or NULL when memory runs out. A SQL NULL gives "". */
static char *col_dup(sqlite3_stmt *st, int col, bool blob, size_t *len)
{
    const void *p = blob ? sqlite3_column_blob(st, col) : (const void *)sqlite3_column_text(st, col);
    size_t n = (size_t)sqlite3_column_bytes(st, col); /* after the fetch, as SQLite requires */
    if (!p && sqlite3_column_type(st, col) != SQLITE_NULL && n > 0)
        return NULL; /* SQLite could not convert the value: out of memory */
    char *v = malloc(n + 1);
    if (!v)
        return NULL;
    if (n)
        memcpy(v, p, n);
    v[n] = '\0';
    *len = n;
    return v;
}

/* Binds a limit where 0 means none (SQLite reads a negative LIMIT as none). */
static int bind_limit(sqlite3_stmt *st, int idx, size_t limit)
{
    return sqlite3_bind_int64(st, idx, limit == 0 || limit > INT64_MAX ? -1 : (int64_t)limit);
}

/* ---- open, migrate, close ------------------------------------------------- */

/* Runs one of our own PRAGMAs and returns its first value, if any, as text. */
static int pragma(store *s, const char *sql, char *val, size_t cap, char err[256])
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return db_fail(s, err, sql, rc);
    if (val)
        val[0] = '\0';
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (val && !val[0]) {
            const unsigned char *t = sqlite3_column_text(st, 0);
            snprintf(val, cap, "%s", t ? (const char *)t : "");
        }
    }
    if (rc != SQLITE_DONE) {
        rc = db_fail(s, err, sql, rc);
        sqlite3_finalize(st);
        return rc;
    }
    sqlite3_finalize(st);
    return 0;
}

static int read_user_version(store *s, int *out, char err[256])
{
    char val[32];
    int rc = pragma(s, "PRAGMA user_version", val, sizeof val, err);
    if (rc)
        return rc;
    *out = atoi(val);
    return 0;
}

static int migrate(store *s, int target, char err[256])
{
    for (int i = 0; i < N_MIGRATIONS; i++) {
        const migration *m = &migrations[i];
        if (m->version > target)
            break;
        if (m->version <= s->version)
            continue;
        char what[128];
        snprintf(what, sizeof what, "migration to schema version %d (%s)", m->version, m->what);
        int rc = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            return db_fail(s, err, what, rc);
        /* Another process may have migrated while we waited for the lock. */
        int now;
        rc = read_user_version(s, &now, err);
        if (rc)
            goto fail;
        if (now < m->version) {
            rc = sqlite3_exec(s->db, m->sql, NULL, NULL, NULL);
            if (rc != SQLITE_OK) {
                rc = db_fail(s, err, what, rc);
                goto fail;
            }
            char set[64];
            snprintf(set, sizeof set, "PRAGMA user_version = %d", m->version);
            rc = sqlite3_exec(s->db, set, NULL, NULL, NULL);
            if (rc != SQLITE_OK) {
                rc = db_fail(s, err, what, rc);
                goto fail;
            }
        }
        rc = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            rc = db_fail(s, err, what, rc);
            goto fail;
        }
        s->version = now > m->version ? now : m->version;
        continue;
    fail:
        tx_rollback(s, err);
        return rc;
    }
    return 0;
}

static bool is_special_path(const char *path)
{
    return strcmp(path, ":memory:") == 0;
}

int store_open(store **out, const char *path, const store_opts *opts, char err[256])
{
    *out = NULL;
    store_opts o = {0};
    if (opts)
        o = *opts;
    if (!path || !path[0]) {
        snprintf(err, 256, "store: no database path given");
        return STORE_EINVAL;
    }
    if (sqlite3_libversion_number() < SQLITE_MIN_VERSION) {
        snprintf(err, 256, "store: SQLite %s is too old; 3.37 or newer is needed",
                 sqlite3_libversion());
        return STORE_EIO;
    }
    if (o.busy_timeout_ms < 0 || o.max_db_bytes < 0 || o.migrate_to < 0 ||
        o.migrate_to > store_schema_version()) {
        snprintf(err, 256, "store: %s: bad options (busy timeout %d ms, size cap %" PRId64
                 " bytes, migrate to %d of %d)", path, o.busy_timeout_ms, o.max_db_bytes,
                 o.migrate_to, store_schema_version());
        return STORE_EINVAL;
    }

    store *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, 256, "store: %s: out of memory", path);
        return STORE_ENOMEM;
    }
    s->path = strdup(path);
    if (!s->path) {
        free(s);
        snprintf(err, 256, "store: %s: out of memory", path);
        return STORE_ENOMEM;
    }
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s->path);
        free(s);
        snprintf(err, 256, "store: %s: cannot create the handle's mutex", path);
        return STORE_ENOMEM;
    }
    s->max_db_bytes = o.max_db_bytes;
    s->now_ms = o.now_ms ? o.now_ms : real_now_ms;
    s->now_ctx = o.now_ctx;
    int rc;

    /* Conversations are private: create the file 0600 ourselves, and SQLite
       gives its -wal and -shm files the same mode as the database. */
    if (!is_special_path(path)) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) {
            snprintf(err, 256, "%s: cannot open or create the database: %s", path,
                     strerror(errno));
            rc = STORE_EIO;
            goto fail;
        }
        close(fd);
    }

    rc = sqlite3_open_v2(path, &s->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                         NULL);
    if (rc != SQLITE_OK) {
        if (!s->db) {
            snprintf(err, 256, "%s: cannot open the database: out of memory", path);
            rc = STORE_ENOMEM;
            goto fail;
        }
        rc = db_fail(s, err, "cannot open the database", rc);
        goto fail;
    }
    if ((rc = sqlite3_extended_result_codes(s->db, 1)) != SQLITE_OK ||
        (rc = sqlite3_busy_timeout(s->db, o.busy_timeout_ms ? o.busy_timeout_ms
                                                            : DEFAULT_BUSY_TIMEOUT_MS)) !=
            SQLITE_OK ||
        /* Nothing in our SQL needs the schema to be trusted or writable, or
           extensions: turn them off so a tampered file cannot run code or
           corrupt itself through us. */
        (rc = sqlite3_db_config(s->db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL)) != SQLITE_OK ||
        (rc = sqlite3_db_config(s->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL)) != SQLITE_OK ||
        (rc = sqlite3_db_config(s->db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0, NULL)) !=
            SQLITE_OK) {
        rc = db_fail(s, err, "configure the connection", rc);
        goto fail;
    }

    /* The version first: a database from a newer Outpost is left untouched. */
    rc = read_user_version(s, &s->version, err);
    if (rc)
        goto fail;
    if (s->version > store_schema_version()) {
        snprintf(err, 256,
                 "%s: schema version %d is newer than this build knows (%d); refusing to open it"
                 " (run a newer outpost, or use another state directory)",
                 path, s->version, store_schema_version());
        rc = STORE_EVERSION;
        goto fail;
    }

    char val[32];
    /* Only takes effect on an empty file: retention can then hand freed
       pages back to the file system, which a disk budget needs. */
    if (s->version == 0 && (rc = pragma(s, "PRAGMA auto_vacuum = INCREMENTAL", NULL, 0, err)))
        goto fail;
    if ((rc = pragma(s, "PRAGMA journal_mode = WAL", val, sizeof val, err)))
        goto fail;
    if (strcmp(val, "wal") != 0 && strcmp(val, "memory") != 0) {
        snprintf(err, 256, "%s: cannot switch the database to WAL mode (journal mode is '%s')",
                 path, val);
        rc = STORE_EIO;
        goto fail;
    }
    char sql[96];
    snprintf(sql, sizeof sql, "PRAGMA journal_size_limit = %d", WAL_SIZE_LIMIT_BYTES);
    if ((rc = pragma(s, "PRAGMA synchronous = NORMAL", NULL, 0, err)) ||
        (rc = pragma(s, "PRAGMA foreign_keys = ON", NULL, 0, err)) ||
        /* Deleted conversations are overwritten, not left in free pages. */
        (rc = pragma(s, "PRAGMA secure_delete = ON", NULL, 0, err)) ||
        (rc = pragma(s, sql, NULL, 0, err)))
        goto fail;
    if (o.max_db_bytes > 0) {
        if ((rc = pragma(s, "PRAGMA page_size", val, sizeof val, err)))
            goto fail;
        int64_t page = atoll(val) > 0 ? atoll(val) : 4096;
        int64_t pages = o.max_db_bytes / page > 0 ? o.max_db_bytes / page : 1;
        snprintf(sql, sizeof sql, "PRAGMA max_page_count = %" PRId64, pages);
        if ((rc = pragma(s, sql, NULL, 0, err)))
            goto fail;
    }

    rc = migrate(s, o.migrate_to ? o.migrate_to : store_schema_version(), err);
    if (rc)
        goto fail;
    *out = s;
    return 0;

fail:
    store_close(s);
    return rc;
}

void store_close(store *s)
{
    if (!s)
        return;
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(s->stmt[i]);
    /* With every statement finalized, close cannot be refused as busy; the
       last connection to close checkpoints the WAL into the file. Should it
       still refuse, close_v2 frees the connection once it can. */
    if (s->db && sqlite3_close(s->db) != SQLITE_OK)
        sqlite3_close_v2(s->db);
    pthread_mutex_destroy(&s->mu);
    free(s->path);
    free(s);
}

int store_new_id(char id[STORE_ID_SIZE], char err[256])
{
    unsigned char b[16];
    size_t got = 0;
    while (got < sizeof b) {
        ssize_t n = getrandom(b + got, sizeof b - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            snprintf(err, 256, "store: getrandom for a new id failed: %s", strerror(errno));
            return STORE_EIO;
        }
        got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof b; i++) {
        id[2 * i] = hex[b[i] >> 4];
        id[2 * i + 1] = hex[b[i] & 15];
    }
    id[2 * sizeof b] = '\0';
    return 0;
}

/* ---- sessions ------------------------------------------------------------- */

static int not_found(char err[256], const char *id)
{
    snprintf(err, 256, "store: session '%.64s' not found", id);
    return STORE_ENOTFOUND;
}

/* An id longer than any session's cannot match: answered as absent without
 * asking the database. */
static int check_lookup_id(char err[256], const char *id)
{
    if (!id) {
        snprintf(err, 256, "store: no session id given");
        return STORE_EINVAL;
    }
    if (strnlen(id, STORE_NAME_MAX + 1) > STORE_NAME_MAX)
        return not_found(err, id);
    return 0;
}

static int read_session(store *s, sqlite3_stmt *st, store_session *o, char err[256])
{
    memset(o, 0, sizeof *o);
    int rc;
    if ((rc = col_text(s, st, 0, o->id, sizeof o->id, err)) ||
        (rc = col_text(s, st, 2, o->model, sizeof o->model, err)) ||
        (rc = col_text(s, st, 3, o->title, sizeof o->title, err)) ||
        (rc = col_text(s, st, 8, o->kv_path, sizeof o->kv_path, err)))
        return rc;
    o->owner_uid = (uid_t)sqlite3_column_int64(st, 1);
    o->created_ms = sqlite3_column_int64(st, 4);
    o->updated_ms = sqlite3_column_int64(st, 5);
    o->last_used_ms = sqlite3_column_int64(st, 6);
    o->n_messages = sqlite3_column_int64(st, 7);
    o->kv_tokens = sqlite3_column_int64(st, 9);
    o->kv_bytes = sqlite3_column_int64(st, 10);
    return 0;
}

int store_session_create(store *s, uid_t owner_uid, const char *model, const char *title,
                         char id[STORE_ID_SIZE], char err[256])
{
    int rc;
    if ((rc = check_cstr(err, "model name", model, STORE_NAME_MAX, false)) ||
        (title && (rc = check_cstr(err, "session title", title, STORE_TITLE_MAX, true))))
        return rc;
    if ((rc = store_new_id(id, err)))
        return rc;
    sqlite3_stmt *st = NULL;
    lock(s);
    if ((rc = stmt_get(s, ST_SESSION_INSERT, &st, err)))
        goto out;
    if ((rc = sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 2, (int64_t)owner_uid)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(st, 3, model, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(st, 4, title, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 5, now_ms(s))) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_SESSION_INSERT].name, rc);
        stmt_done(st);
        goto out;
    }
    rc = run(s, ST_SESSION_INSERT, st, err);
out:
    unlock(s);
    if (rc)
        id[0] = '\0';
    return rc;
}

int store_session_get(store *s, const char *id, uid_t requester_uid, store_session *out,
                      char err[256])
{
    int rc = check_lookup_id(err, id);
    if (rc)
        return rc;
    sqlite3_stmt *st = NULL;
    lock(s);
    if ((rc = stmt_get(s, ST_SESSION_GET, &st, err)))
        goto out;
    if ((rc = sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 2, (int64_t)requester_uid)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_SESSION_GET].name, rc);
        goto done;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        rc = read_session(s, st, out, err);
    else if (rc == SQLITE_DONE)
        rc = not_found(err, id);
    else
        rc = db_fail(s, err, stmts[ST_SESSION_GET].name, rc);
done:
    stmt_done(st);
out:
    unlock(s);
    return rc;
}

int store_session_list(store *s, uid_t owner_uid, size_t limit, store_session **out,
                       size_t *n_out, char err[256])
{
    *out = NULL;
    *n_out = 0;
    store_session *v = NULL;
    size_t n = 0, cap = 0;
    sqlite3_stmt *st = NULL;
    int rc;
    lock(s);
    if ((rc = stmt_get(s, ST_SESSION_LIST, &st, err)))
        goto out;
    if ((rc = sqlite3_bind_int64(st, 1, (int64_t)owner_uid)) != SQLITE_OK ||
        (rc = bind_limit(st, 2, limit)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_SESSION_LIST].name, rc);
        goto done;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            store_session *nv = realloc(v, ncap * sizeof *nv);
            if (!nv) {
                snprintf(err, 256, "%s: list sessions: out of memory", s->path);
                rc = STORE_ENOMEM;
                goto done;
            }
            v = nv, cap = ncap;
        }
        if ((rc = read_session(s, st, &v[n], err)))
            goto done;
        n++;
    }
    if (rc != SQLITE_DONE) {
        rc = db_fail(s, err, stmts[ST_SESSION_LIST].name, rc);
        goto done;
    }
    rc = 0;
done:
    stmt_done(st);
out:
    unlock(s);
    if (rc) {
        free(v);
        return rc;
    }
    *out = v;
    *n_out = n;
    return 0;
}

int store_session_delete(store *s, const char *id, uid_t uid, store_session *deleted,
                         char err[256])
{
    int rc = check_lookup_id(err, id);
    if (rc)
        return rc;
    sqlite3_stmt *st = NULL;
    lock(s);
    if ((rc = tx_begin(s, true, err)))
        goto out;
    if (deleted) {
        if ((rc = stmt_get(s, ST_SESSION_GET, &st, err)))
            goto rollback;
        if ((rc = sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC)) != SQLITE_OK ||
            (rc = sqlite3_bind_int64(st, 2, (int64_t)uid)) != SQLITE_OK) {
            rc = db_fail(s, err, stmts[ST_SESSION_GET].name, rc);
            stmt_done(st);
            goto rollback;
        }
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            rc = read_session(s, st, deleted, err);
        else if (rc == SQLITE_DONE)
            rc = not_found(err, id);
        else
            rc = db_fail(s, err, stmts[ST_SESSION_GET].name, rc);
        stmt_done(st);
        if (rc)
            goto rollback;
    }
    if ((rc = stmt_get(s, ST_SESSION_DELETE, &st, err)))
        goto rollback;
    if ((rc = sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 2, (int64_t)uid)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_SESSION_DELETE].name, rc);
        stmt_done(st);
        goto rollback;
    }
    if ((rc = run(s, ST_SESSION_DELETE, st, err)))
        goto rollback;
    if (sqlite3_changes(s->db) == 0) {
        rc = not_found(err, id);
        goto rollback;
    }
    if ((rc = tx_commit(s, err)))
        goto rollback;
    goto out;
rollback:
    tx_rollback(s, err);
out:
    unlock(s);
    return rc;
}

int store_message_append(store *s, const char *session_id, uid_t uid, store_role role,
                         const char *content, size_t content_len, int64_t n_tokens,
                         int64_t *seq_out, char err[256])
{
    int rc = check_lookup_id(err, session_id);
    if (rc)
        return rc;
    if (!store_role_name(role)) {
        snprintf(err, 256, "store: message role %d is not one of system, user, assistant, tool",
                 (int)role);
        return STORE_EINVAL;
    }
    if (n_tokens < 0) {
        snprintf(err, 256, "store: message token count %" PRId64 " is negative", n_tokens);
        return STORE_EINVAL;
    }
    if ((rc = check_text(err, "message content", content, content_len, STORE_CONTENT_MAX, true)))
        return rc;

    sqlite3_stmt *st = NULL;
    int64_t seq = 0;
    lock(s);
    int64_t now = now_ms(s);
    if ((rc = tx_begin(s, true, err)))
        goto out;
    if ((rc = stmt_get(s, ST_MESSAGE_INSERT, &st, err)))
        goto rollback;
    if ((rc = sqlite3_bind_text(st, 1, session_id, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 2, (int64_t)uid)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(st, 3, role_names[role], -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(st, 4, content, (int)content_len, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 5, n_tokens)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 6, now)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_MESSAGE_INSERT].name, rc);
        stmt_done(st);
        goto rollback;
    }
    bool inserted = false;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        seq = sqlite3_column_int64(st, 0);
        inserted = true;
    }
    if (rc != SQLITE_DONE) {
        rc = db_fail(s, err, stmts[ST_MESSAGE_INSERT].name, rc);
        stmt_done(st);
        goto rollback;
    }
    stmt_done(st);
    if (!inserted) {
        rc = not_found(err, session_id);
        goto rollback;
    }
    if ((rc = stmt_get(s, ST_SESSION_TOUCH, &st, err)))
        goto rollback;
    if ((rc = sqlite3_bind_text(st, 1, session_id, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 2, now)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_SESSION_TOUCH].name, rc);
        stmt_done(st);
        goto rollback;
    }
    if ((rc = run(s, ST_SESSION_TOUCH, st, err)) || (rc = tx_commit(s, err)))
        goto rollback;
    if (seq_out)
        *seq_out = seq;
    goto out;
rollback:
    tx_rollback(s, err);
out:
    unlock(s);
    return rc;
}

void store_messages_free(store_message *m, size_t n)
{
    if (!m)
        return;
    for (size_t i = 0; i < n; i++)
        free(m[i].content);
    free(m);
}

int store_messages_load(store *s, const char *session_id, uid_t uid, store_message **out,
                        size_t *n_out, char err[256])
{
    *out = NULL;
    *n_out = 0;
    int rc = check_lookup_id(err, session_id);
    if (rc)
        return rc;
    store_message *v = NULL;
    size_t n = 0, cap = 0;
    sqlite3_stmt *st = NULL;
    lock(s);
    /* One read transaction: the ownership check and the rows see one snapshot. */
    if ((rc = tx_begin(s, false, err)))
        goto out;
    if ((rc = stmt_get(s, ST_SESSION_OWNED, &st, err)))
        goto rollback;
    if ((rc = sqlite3_bind_text(st, 1, session_id, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 2, (int64_t)uid)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_SESSION_OWNED].name, rc);
        stmt_done(st);
        goto rollback;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        rc = not_found(err, session_id);
    else if (rc != SQLITE_ROW)
        rc = db_fail(s, err, stmts[ST_SESSION_OWNED].name, rc);
    else
        rc = 0;
    stmt_done(st);
    if (rc)
        goto rollback;

    if ((rc = stmt_get(s, ST_MESSAGES_LOAD, &st, err)))
        goto rollback;
    if ((rc = sqlite3_bind_text(st, 1, session_id, -1, SQLITE_STATIC)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_MESSAGES_LOAD].name, rc);
        stmt_done(st);
        goto rollback;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            store_message *nv = realloc(v, ncap * sizeof *nv);
            if (!nv)
                goto nomem;
            v = nv, cap = ncap;
        }
        store_message *m = &v[n];
        memset(m, 0, sizeof *m);
        char role[16];
        if ((rc = col_text(s, st, 1, role, sizeof role, err)))
            goto row_fail;
        if (role_parse(role, &m->role) != 0) {
            snprintf(err, 256, "%s: session '%.64s' message %lld has unknown role '%s'", s->path,
                     session_id, (long long)sqlite3_column_int64(st, 0), role);
            rc = STORE_ECORRUPT;
            goto row_fail;
        }
        if (!(m->content = col_dup(st, 2, false, &m->content_len)))
            goto nomem;
        m->seq = sqlite3_column_int64(st, 0);
        m->n_tokens = sqlite3_column_int64(st, 3);
        m->created_ms = sqlite3_column_int64(st, 4);
        n++;
    }
    if (rc != SQLITE_DONE) {
        rc = db_fail(s, err, stmts[ST_MESSAGES_LOAD].name, rc);
        goto row_fail;
    }
    stmt_done(st);
    if ((rc = tx_commit(s, err)))
        goto rollback;
    unlock(s);
    *out = v;
    *n_out = n;
    return 0;

nomem:
    snprintf(err, 256, "%s: load messages of session '%.64s': out of memory", s->path, session_id);
    rc = STORE_ENOMEM;
row_fail:
    stmt_done(st);
rollback:
    tx_rollback(s, err);
out:
    unlock(s);
    store_messages_free(v, n);
    return rc;
}

int store_session_set_kv(store *s, const char *id, const char *path, int64_t n_tokens,
                         int64_t n_bytes, char err[256])
{
    int rc = check_lookup_id(err, id);
    if (rc)
        return rc;
    if (path && (rc = check_cstr(err, "KV file path", path, STORE_PATH_MAX, false)))
        return rc;
    if (n_tokens < 0 || n_bytes < 0) {
        snprintf(err, 256, "store: session '%.64s': KV state of %" PRId64 " tokens, %" PRId64
                 " bytes: counts must not be negative", id, n_tokens, n_bytes);
        return STORE_EINVAL;
    }
    if (!path)
        n_tokens = n_bytes = 0;
    sqlite3_stmt *st = NULL;
    lock(s);
    if ((rc = stmt_get(s, ST_SESSION_SET_KV, &st, err)))
        goto out;
    if ((rc = sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(st, 2, path, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 3, n_tokens)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 4, n_bytes)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_SESSION_SET_KV].name, rc);
        stmt_done(st);
        goto out;
    }
    if ((rc = run(s, ST_SESSION_SET_KV, st, err)))
        goto out;
    if (sqlite3_changes(s->db) == 0)
        rc = not_found(err, id);
out:
    unlock(s);
    return rc;
}

int store_sessions_lru(store *s, size_t limit, store_kv_entry **out, size_t *n_out,
                       char err[256])
{
    *out = NULL;
    *n_out = 0;
    store_kv_entry *v = NULL;
    size_t n = 0, cap = 0;
    sqlite3_stmt *st = NULL;
    int rc;
    lock(s);
    if ((rc = stmt_get(s, ST_SESSIONS_LRU, &st, err)))
        goto out;
    if ((rc = bind_limit(st, 1, limit)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_SESSIONS_LRU].name, rc);
        goto done;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            store_kv_entry *nv = realloc(v, ncap * sizeof *nv);
            if (!nv) {
                snprintf(err, 256, "%s: list saved KV states: out of memory", s->path);
                rc = STORE_ENOMEM;
                goto done;
            }
            v = nv, cap = ncap;
        }
        store_kv_entry *e = &v[n];
        if ((rc = col_text(s, st, 0, e->id, sizeof e->id, err)) ||
            (rc = col_text(s, st, 1, e->kv_path, sizeof e->kv_path, err)))
            goto done;
        e->kv_tokens = sqlite3_column_int64(st, 2);
        e->kv_bytes = sqlite3_column_int64(st, 3);
        e->last_used_ms = sqlite3_column_int64(st, 4);
        n++;
    }
    if (rc != SQLITE_DONE) {
        rc = db_fail(s, err, stmts[ST_SESSIONS_LRU].name, rc);
        goto done;
    }
    rc = 0;
done:
    stmt_done(st);
out:
    unlock(s);
    if (rc) {
        free(v);
        return rc;
    }
    *out = v;
    *n_out = n;
    return 0;
}

/* ---- telemetry ------------------------------------------------------------ */

/* Negative, NaN and infinite measurements are stored as NULL: not measured. */
static int bind_measure(sqlite3_stmt *st, int idx, double v)
{
    return isfinite(v) && v >= 0 ? sqlite3_bind_double(st, idx, v) : sqlite3_bind_null(st, idx);
}

int store_request_insert(store *s, const store_request *r, char err[256])
{
    int rc;
    char gen_id[STORE_ID_SIZE];
    const char *id = r->id;
    if (!id) {
        if ((rc = store_new_id(gen_id, err)))
            return rc;
        id = gen_id;
    }
    if ((rc = check_cstr(err, "request id", id, STORE_NAME_MAX, false)) ||
        (r->session_id &&
         (rc = check_cstr(err, "request session id", r->session_id, STORE_NAME_MAX, false))) ||
        (r->reason && (rc = check_cstr(err, "routing reason", r->reason, STORE_TITLE_MAX, true))) ||
        (rc = check_cstr(err, "request model", r->model, STORE_NAME_MAX, false)) ||
        (rc = check_cstr(err, "request status", r->status, STORE_STATUS_MAX, false)))
        return rc;
    if (!store_route_name(r->route)) {
        snprintf(err, 256, "store: request %.64s: route %d is not one of local, peer, cloud", id,
                 (int)r->route);
        return STORE_EINVAL;
    }
    if (r->prompt_tokens < 0 || r->completion_tokens < 0 || r->cached_tokens < 0) {
        snprintf(err, 256, "store: request %.64s: token counts must not be negative (prompt %"
                 PRId64 ", completion %" PRId64 ", cached %" PRId64 ")", id, r->prompt_tokens,
                 r->completion_tokens, r->cached_tokens);
        return STORE_EINVAL;
    }
    if (!isfinite(r->cost_usd) || r->cost_usd < 0) {
        snprintf(err, 256, "store: request %.64s: cost %g USD is not a non-negative number", id,
                 r->cost_usd);
        return STORE_EINVAL;
    }
    sqlite3_stmt *st = NULL;
    lock(s);
    int64_t created = r->created_ms ? r->created_ms : now_ms(s);
    if ((rc = stmt_get(s, ST_REQUEST_INSERT, &st, err)))
        goto out;
    if ((rc = sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(st, 2, r->session_id, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(st, 3, route_names[r->route], -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(st, 4, r->reason ? r->reason : "", -1, SQLITE_STATIC)) !=
            SQLITE_OK ||
        (rc = sqlite3_bind_text(st, 5, r->model, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 6, r->prompt_tokens)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 7, r->completion_tokens)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 8, r->cached_tokens)) != SQLITE_OK ||
        (rc = bind_measure(st, 9, r->ttft_ms)) != SQLITE_OK ||
        (rc = bind_measure(st, 10, r->decode_tok_s)) != SQLITE_OK ||
        (rc = bind_measure(st, 11, r->token_p50_ms)) != SQLITE_OK ||
        (rc = bind_measure(st, 12, r->token_p95_ms)) != SQLITE_OK ||
        (rc = sqlite3_bind_double(st, 13, r->cost_usd)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(st, 14, r->status, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 15, created)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_REQUEST_INSERT].name, rc);
        stmt_done(st);
        goto out;
    }
    rc = run(s, ST_REQUEST_INSERT, st, err);
    if (rc == STORE_EEXIST)
        snprintf(err, 256, "%s: request id '%.64s' is already recorded", s->path, id);
out:
    unlock(s);
    return rc;
}

/* The TTFT at nearest rank (1-based) among the n measured since since_ms. */
static int ttft_at_rank(store *s, int64_t since_ms, int64_t rank, double *out, char err[256])
{
    sqlite3_stmt *st = NULL;
    int rc = stmt_get(s, ST_ROLLUP_TTFT_AT, &st, err);
    if (rc)
        return rc;
    if ((rc = sqlite3_bind_int64(st, 1, since_ms)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 2, rank - 1)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_ROLLUP_TTFT_AT].name, rc);
        stmt_done(st);
        return rc;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_double(st, 0);
        rc = 0;
    } else if (rc == SQLITE_DONE) {
        *out = -1;
        rc = 0;
    } else {
        rc = db_fail(s, err, stmts[ST_ROLLUP_TTFT_AT].name, rc);
    }
    stmt_done(st);
    return rc;
}

int store_requests_cost(store *s, store_route route, int64_t since_ms, double *usd_out,
                        char err[256])
{
    *usd_out = 0;
    if ((unsigned)route >= STORE_ROUTE_COUNT) {
        snprintf(err, 256, "store: route %d is not one of local, peer, cloud", (int)route);
        return STORE_EINVAL;
    }
    sqlite3_stmt *st = NULL;
    lock(s);
    int rc = stmt_get(s, ST_REQUESTS_COST, &st, err);
    if (rc)
        goto out;
    if ((rc = sqlite3_bind_int64(st, 1, since_ms)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(st, 2, route_names[route], -1, SQLITE_STATIC)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_REQUESTS_COST].name, rc);
        stmt_done(st);
        goto out;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *usd_out = sqlite3_column_double(st, 0);
        rc = 0;
    } else {
        rc = db_fail(s, err, stmts[ST_REQUESTS_COST].name, rc);
    }
    stmt_done(st);
out:
    unlock(s);
    return rc;
}

int store_kv_usage(store *s, int64_t *sessions_out, int64_t *bytes_out, char err[256])
{
    *sessions_out = *bytes_out = 0;
    sqlite3_stmt *st = NULL;
    lock(s);
    int rc = stmt_get(s, ST_KV_USAGE, &st, err);
    if (!rc) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *sessions_out = sqlite3_column_int64(st, 0);
            *bytes_out = (int64_t)sqlite3_column_double(st, 1);
            rc = 0;
        } else {
            rc = db_fail(s, err, stmts[ST_KV_USAGE].name, rc);
        }
        stmt_done(st);
    }
    unlock(s);
    return rc;
}

int store_requests_rollup(store *s, int64_t since_ms, store_rollup *out, char err[256])
{
    memset(out, 0, sizeof *out);
    out->ttft_p50_ms = out->ttft_p95_ms = out->decode_tok_s_mean = -1;
    sqlite3_stmt *st = NULL;
    int rc;
    lock(s);
    /* One snapshot for the counts and the percentiles. */
    if ((rc = tx_begin(s, false, err)))
        goto out;
    if ((rc = stmt_get(s, ST_ROLLUP_GROUPS, &st, err)))
        goto rollback;
    if ((rc = sqlite3_bind_int64(st, 1, since_ms)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_ROLLUP_GROUPS].name, rc);
        stmt_done(st);
        goto rollback;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        char route_s[16], status[STORE_STATUS_MAX + 1];
        if ((rc = col_text(s, st, 0, route_s, sizeof route_s, err)) ||
            (rc = col_text(s, st, 1, status, sizeof status, err))) {
            stmt_done(st);
            goto rollback;
        }
        int64_t n = sqlite3_column_int64(st, 2);
        store_route route;
        bool known = route_parse(route_s, &route) == 0;
        out->n_requests += n;
        if (strcmp(status, "ok") != 0)
            out->n_errors += n;
        if (known)
            out->n_by_route[route] += n;
        out->prompt_tokens += sqlite3_column_int64(st, 3);
        out->completion_tokens += sqlite3_column_int64(st, 4);
        out->cached_tokens += sqlite3_column_int64(st, 5);
        out->cost_usd += sqlite3_column_double(st, 6);
        if (known && out->n_groups < STORE_ROLLUP_GROUPS) {
            store_rollup_group *g = &out->groups[out->n_groups++];
            g->route = route;
            memcpy(g->status, status, sizeof g->status);
            g->n = n;
        } else {
            out->groups_dropped++;
        }
    }
    if (rc != SQLITE_DONE) {
        rc = db_fail(s, err, stmts[ST_ROLLUP_GROUPS].name, rc);
        stmt_done(st);
        goto rollback;
    }
    stmt_done(st);

    if ((rc = stmt_get(s, ST_ROLLUP_TTFT_COUNT, &st, err)))
        goto rollback;
    if ((rc = sqlite3_bind_int64(st, 1, since_ms)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_ROLLUP_TTFT_COUNT].name, rc);
        stmt_done(st);
        goto rollback;
    }
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        rc = db_fail(s, err, stmts[ST_ROLLUP_TTFT_COUNT].name, rc);
        stmt_done(st);
        goto rollback;
    }
    int64_t n_ttft = sqlite3_column_int64(st, 0);
    if (sqlite3_column_type(st, 1) != SQLITE_NULL)
        out->decode_tok_s_mean = sqlite3_column_double(st, 1);
    stmt_done(st);

    /* Nearest rank: the p-th percentile of n values is the ceil(p * n / 100)-th
       smallest; SQLite finds it with a bounded sort, not a copy of every row. */
    if (n_ttft > 0) {
        if ((rc = ttft_at_rank(s, since_ms, (50 * n_ttft + 99) / 100, &out->ttft_p50_ms, err)) ||
            (rc = ttft_at_rank(s, since_ms, (95 * n_ttft + 99) / 100, &out->ttft_p95_ms, err)))
            goto rollback;
    }
    if ((rc = tx_commit(s, err)))
        goto rollback;
    goto out;
rollback:
    tx_rollback(s, err);
out:
    unlock(s);
    return rc;
}

/* ---- retention ------------------------------------------------------------ */

void store_prune_result_free(store_prune_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_kv_paths; i++)
        free(r->kv_paths[i]);
    free(r->kv_paths);
    r->kv_paths = NULL;
    r->n_kv_paths = 0;
}

static int add_path(store_prune_result *res, size_t *cap, const char *path)
{
    if (res->n_kv_paths == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        char **nv = realloc(res->kv_paths, ncap * sizeof *nv);
        if (!nv)
            return -1;
        res->kv_paths = nv, *cap = ncap;
    }
    char *p = strdup(path);
    if (!p)
        return -1;
    res->kv_paths[res->n_kv_paths++] = p;
    return 0;
}

/* One retention transaction: deletes at most `limit` rows with statement id,
 * under the lock, and reports how many went. With res, collects the KV paths
 * the statement returns. When cap_rows > 0 the limit is lowered so the table
 * keeps cap_rows requests. */
static int prune_batch(store *s, enum stmt_id id, int64_t cutoff, int64_t limit,
                       int64_t cap_rows, int64_t *n_deleted, store_prune_result *res,
                       size_t *paths_cap, char err[256])
{
    sqlite3_stmt *st = NULL;
    *n_deleted = 0;
    lock(s);
    int rc = tx_begin(s, true, err);
    if (rc)
        goto out;
    if (cap_rows > 0) {
        if ((rc = stmt_get(s, ST_REQUESTS_COUNT, &st, err)))
            goto rollback;
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW) {
            rc = db_fail(s, err, stmts[ST_REQUESTS_COUNT].name, rc);
            stmt_done(st);
            goto rollback;
        }
        int64_t excess = sqlite3_column_int64(st, 0) - cap_rows;
        stmt_done(st);
        if (excess <= 0) {
            rc = tx_commit(s, err);
            if (rc)
                goto rollback;
            goto out;
        }
        if (excess < limit)
            limit = excess;
    }
    if ((rc = stmt_get(s, id, &st, err)))
        goto rollback;
    if ((rc = sqlite3_bind_int64(st, 1, cutoff)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 2, limit)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[id].name, rc);
        stmt_done(st);
        goto rollback;
    }
    int64_t returned = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        returned++;
        const unsigned char *p = sqlite3_column_text(st, 0);
        if (res && p && p[0] && add_path(res, paths_cap, (const char *)p) != 0) {
            snprintf(err, 256, "%s: %s: out of memory", s->path, stmts[id].name);
            rc = STORE_ENOMEM;
            stmt_done(st);
            goto rollback;
        }
    }
    if (rc != SQLITE_DONE) {
        rc = db_fail(s, err, stmts[id].name, rc);
        stmt_done(st);
        goto rollback;
    }
    stmt_done(st);
    /* A RETURNING statement counts its own rows; cascaded message deletes are
       not in sqlite3_changes() either way. */
    *n_deleted = res ? returned : sqlite3_changes(s->db);
    if ((rc = tx_commit(s, err))) {
        *n_deleted = 0;
        goto rollback;
    }
    goto out;
rollback:
    tx_rollback(s, err);
out:
    unlock(s);
    return rc;
}

int store_prune(store *s, const store_retention *r, store_prune_result *out, char err[256])
{
    store_prune_result res = {0};
    size_t paths_cap = 0;
    int64_t n;
    int rc = 0;
    if (r->request_max_age_s < 0 || r->max_requests < 0 || r->session_idle_s < 0) {
        snprintf(err, 256, "store: retention limits must not be negative (request age %" PRId64
                 " s, max requests %" PRId64 ", session idle %" PRId64 " s)",
                 r->request_max_age_s, r->max_requests, r->session_idle_s);
        return STORE_EINVAL;
    }
    lock(s);
    int64_t now = now_ms(s);
    unlock(s);

    if (r->request_max_age_s > 0) {
        int64_t cutoff = now - r->request_max_age_s * 1000;
        do {
            if ((rc = prune_batch(s, ST_PRUNE_REQUESTS_AGE, cutoff, PRUNE_BATCH, 0, &n, NULL,
                                  NULL, err)))
                goto fail;
            res.n_requests += n;
        } while (n == PRUNE_BATCH);
    }
    if (r->max_requests > 0) {
        do {
            if ((rc = prune_batch(s, ST_PRUNE_REQUESTS_OLDEST, 0, PRUNE_BATCH, r->max_requests,
                                  &n, NULL, NULL, err)))
                goto fail;
            res.n_requests += n;
        } while (n == PRUNE_BATCH);
    }
    if (r->session_idle_s > 0) {
        int64_t cutoff = now - r->session_idle_s * 1000;
        /* Sessions carry their messages (cascade), so fewer per batch. */
        do {
            if ((rc = prune_batch(s, ST_PRUNE_SESSIONS_IDLE, cutoff, PRUNE_BATCH / 8, 0, &n,
                                  &res, &paths_cap, err)))
                goto fail;
            res.n_sessions += n;
        } while (n == PRUNE_BATCH / 8);
    }
    do {
        if ((rc = prune_batch(s, ST_PRUNE_OUTBOX_SENT, 0, PRUNE_BATCH, 0, &n, NULL, NULL, err)))
            goto fail;
        res.n_outbox += n;
    } while (n == PRUNE_BATCH);

    if (res.n_requests + res.n_sessions + res.n_outbox > 0) {
        lock(s);
        rc = exec_id(s, ST_INCREMENTAL_VACUUM, err);
        unlock(s);
        if (rc)
            goto fail;
    }
    if (out)
        *out = res;
    else
        store_prune_result_free(&res);
    return 0;
fail:
    /* Batches before the failure stay committed; report what they did. */
    if (out)
        *out = res;
    else
        store_prune_result_free(&res);
    return rc;
}

/* ---- settings ------------------------------------------------------------- */

/* Writes one setting; the caller holds the lock (and may hold a transaction). */
static int setting_put(store *s, const char *key, const char *value, char err[256])
{
    sqlite3_stmt *st = NULL;
    int rc = stmt_get(s, ST_SETTING_SET, &st, err);
    if (rc)
        return rc;
    if ((rc = sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_SETTING_SET].name, rc);
        stmt_done(st);
        return rc;
    }
    return run(s, ST_SETTING_SET, st, err);
}

int store_setting_set(store *s, const char *key, const char *value, char err[256])
{
    int rc;
    if ((rc = check_cstr(err, "setting key", key, STORE_TITLE_MAX, false)) ||
        (rc = check_cstr(err, "setting value", value, STORE_CONTENT_MAX, true)))
        return rc;
    lock(s);
    rc = setting_put(s, key, value, err);
    unlock(s);
    return rc;
}

int store_setting_get(store *s, const char *key, char **value_out, char err[256])
{
    *value_out = NULL;
    int rc;
    if (!key) {
        snprintf(err, 256, "store: no setting key given");
        return STORE_EINVAL;
    }
    sqlite3_stmt *st = NULL;
    lock(s);
    if ((rc = stmt_get(s, ST_SETTING_GET, &st, err)))
        goto out;
    if ((rc = sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_SETTING_GET].name, rc);
        goto done;
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        snprintf(err, 256, "store: setting '%.64s' is not set", key);
        rc = STORE_ENOTFOUND;
    } else if (rc != SQLITE_ROW) {
        rc = db_fail(s, err, stmts[ST_SETTING_GET].name, rc);
    } else {
        size_t len;
        char *v = col_dup(st, 0, false, &len);
        if (!v) {
            snprintf(err, 256, "%s: read setting '%.64s': out of memory", s->path, key);
            rc = STORE_ENOMEM;
        } else {
            *value_out = v;
            rc = 0;
        }
    }
done:
    stmt_done(st);
out:
    unlock(s);
    return rc;
}

int store_setting_delete(store *s, const char *key, char err[256])
{
    int rc;
    if (!key) {
        snprintf(err, 256, "store: no setting key given");
        return STORE_EINVAL;
    }
    sqlite3_stmt *st = NULL;
    lock(s);
    if ((rc = stmt_get(s, ST_SETTING_DELETE, &st, err)))
        goto out;
    if ((rc = sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_SETTING_DELETE].name, rc);
        stmt_done(st);
        goto out;
    }
    if ((rc = run(s, ST_SETTING_DELETE, st, err)))
        goto out;
    if (sqlite3_changes(s->db) == 0) {
        snprintf(err, 256, "store: setting '%.64s' is not set", key);
        rc = STORE_ENOTFOUND;
    }
out:
    unlock(s);
    return rc;
}

/* ---- outbox --------------------------------------------------------------- */

static int check_outbox_msg(const char *topic, const void *payload, size_t payload_len,
                            char err[256])
{
    int rc;
    if ((rc = check_cstr(err, "outbox topic", topic, STORE_TOPIC_MAX, false)))
        return rc;
    if (!payload && payload_len) {
        snprintf(err, 256, "store: outbox payload of %zu bytes is missing", payload_len);
        return STORE_EINVAL;
    }
    if (payload_len > STORE_CONTENT_MAX) {
        snprintf(err, 256, "store: outbox payload is %zu bytes, the limit is %u", payload_len,
                 STORE_CONTENT_MAX);
        return STORE_EINVAL;
    }
    return 0;
}

/* Parameters 1-3 of an outbox or inbox insert: topic, payload (an empty
 * payload is still a BLOB, not NULL: a zero blob), time stored. */
static int bind_msg(store *s, sqlite3_stmt *st, const char *topic, const void *payload, size_t payload_len)
{
    int rc;
    if ((rc = sqlite3_bind_text(st, 1, topic, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = payload_len ? sqlite3_bind_blob(st, 2, payload, (int)payload_len, SQLITE_STATIC)
                          : sqlite3_bind_zeroblob(st, 2, 0)) != SQLITE_OK)
        return rc;
    return sqlite3_bind_int64(st, 3, now_ms(s));
}

int store_outbox_put(store *s, const char *topic, const void *payload, size_t payload_len,
                     int64_t *id_out, char err[256])
{
    int rc;
    if ((rc = check_outbox_msg(topic, payload, payload_len, err)))
        return rc;
    sqlite3_stmt *st = NULL;
    lock(s);
    if ((rc = stmt_get(s, ST_OUTBOX_PUT, &st, err)))
        goto out;
    if ((rc = bind_msg(s, st, topic, payload, payload_len)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_OUTBOX_PUT].name, rc);
        stmt_done(st);
        goto out;
    }
    if ((rc = run(s, ST_OUTBOX_PUT, st, err)))
        goto out;
    if (id_out)
        *id_out = sqlite3_last_insert_rowid(s->db);
out:
    unlock(s);
    return rc;
}

void store_outbox_free(store_outbox_msg *m, size_t n)
{
    if (!m)
        return;
    for (size_t i = 0; i < n; i++)
        free(m[i].payload);
    free(m);
}

static int outbox_cmp(const void *a, const void *b)
{
    int64_t x = ((const store_outbox_msg *)a)->id, y = ((const store_outbox_msg *)b)->id;
    return (x > y) - (x < y);
}

/* The peeks: ST_OUTBOX_PEEK and ST_INBOX_PEEK (?1 = limit) and
 * ST_OUTBOX_PEEK_AFTER (?1 = after_id, ?2 = limit). */
static int outbox_peek(store *s, enum stmt_id sid, int64_t after_id, size_t max_n,
                       store_outbox_msg **out, size_t *n_out, char err[256])
{
    *out = NULL;
    *n_out = 0;
    if (max_n == 0)
        return 0;
    store_outbox_msg *v = NULL;
    size_t n = 0, cap = 0;
    sqlite3_stmt *st = NULL;
    int rc;
    lock(s);
    /* A transaction around the one statement: if reading the returned rows
       fails half-way, the attempt counts it made are rolled back with it. */
    if ((rc = tx_begin(s, true, err)))
        goto out;
    if ((rc = stmt_get(s, sid, &st, err)))
        goto rollback;
    if ((sid == ST_OUTBOX_PEEK_AFTER && (rc = sqlite3_bind_int64(st, 1, after_id)) != SQLITE_OK) ||
        (rc = bind_limit(st, sid == ST_OUTBOX_PEEK_AFTER ? 2 : 1, max_n)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[sid].name, rc);
        goto done;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            store_outbox_msg *nv = realloc(v, ncap * sizeof *nv);
            if (!nv)
                goto nomem;
            v = nv, cap = ncap;
        }
        store_outbox_msg *m = &v[n];
        memset(m, 0, sizeof *m);
        if ((rc = col_text(s, st, 1, m->topic, sizeof m->topic, err)))
            goto done;
        if (!(m->payload = (unsigned char *)col_dup(st, 2, true, &m->payload_len)))
            goto nomem;
        m->id = sqlite3_column_int64(st, 0);
        m->created_ms = sqlite3_column_int64(st, 3);
        m->attempts = sqlite3_column_int64(st, 4);
        n++;
    }
    if (rc != SQLITE_DONE) {
        rc = db_fail(s, err, stmts[sid].name, rc);
        goto done;
    }
    stmt_done(st);
    if ((rc = tx_commit(s, err)))
        goto rollback;
    goto out;
nomem:
    snprintf(err, 256, "%s: %s: out of memory", s->path, stmts[sid].name);
    rc = STORE_ENOMEM;
done:
    stmt_done(st);
rollback:
    tx_rollback(s, err);
out:
    unlock(s);
    if (rc) {
        store_outbox_free(v, n);
        return rc;
    }
    /* RETURNING hands rows back in no promised order. */
    if (n > 1)
        qsort(v, n, sizeof *v, outbox_cmp);
    *out = v;
    *n_out = n;
    return 0;
}

int store_outbox_peek(store *s, size_t max_n, store_outbox_msg **out, size_t *n_out,
                      char err[256])
{
    return outbox_peek(s, ST_OUTBOX_PEEK, 0, max_n, out, n_out, err);
}

int store_outbox_peek_after(store *s, int64_t after_id, size_t max_n, store_outbox_msg **out,
                            size_t *n_out, char err[256])
{
    return outbox_peek(s, ST_OUTBOX_PEEK_AFTER, after_id, max_n, out, n_out, err);
}

int store_outbox_ack(store *s, const int64_t *ids, size_t n, char err[256])
{
    if (n == 0)
        return 0;
    if (!ids) {
        snprintf(err, 256, "store: outbox ack of %zu ids without the ids", n);
        return STORE_EINVAL;
    }
    sqlite3_stmt *st = NULL;
    int rc;
    lock(s);
    if ((rc = tx_begin(s, true, err)))
        goto out;
    if ((rc = stmt_get(s, ST_OUTBOX_ACK, &st, err)))
        goto rollback;
    for (size_t i = 0; i < n; i++) {
        if ((rc = sqlite3_bind_int64(st, 1, ids[i])) != SQLITE_OK) {
            rc = db_fail(s, err, stmts[ST_OUTBOX_ACK].name, rc);
            stmt_done(st);
            goto rollback;
        }
        if ((rc = run(s, ST_OUTBOX_ACK, st, err)))
            goto rollback;
    }
    if ((rc = tx_commit(s, err)))
        goto rollback;
    goto out;
rollback:
    tx_rollback(s, err);
out:
    unlock(s);
    return rc;
}

int store_outbox_pending(store *s, int64_t *n_out, char err[256])
{
    *n_out = 0;
    sqlite3_stmt *st = NULL;
    int rc;
    lock(s);
    if ((rc = stmt_get(s, ST_OUTBOX_PENDING, &st, err)))
        goto out;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *n_out = sqlite3_column_int64(st, 0);
        rc = 0;
    } else {
        rc = db_fail(s, err, stmts[ST_OUTBOX_PENDING].name, rc);
    }
    stmt_done(st);
out:
    unlock(s);
    return rc;
}

/* ---- fleet telemetry: bounded outbox, request export ------------------------ */

/* One row's count from a statement, inside the caller's transaction. */
static int count_pending(store *s, int64_t *n, char err[256])
{
    sqlite3_stmt *st = NULL;
    int rc = stmt_get(s, ST_OUTBOX_PENDING, &st, err);
    if (rc)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *n = sqlite3_column_int64(st, 0);
        rc = 0;
    } else {
        rc = db_fail(s, err, stmts[ST_OUTBOX_PENDING].name, rc);
    }
    stmt_done(st);
    return rc;
}

/* Deletes up to n unsent messages of kind (or of any other kind), oldest
 * first; *dropped says how many went. */
static int outbox_drop(store *s, enum stmt_id sid, int64_t kind, int64_t n, int64_t *dropped,
                       char err[256])
{
    *dropped = 0;
    sqlite3_stmt *st = NULL;
    int rc = stmt_get(s, sid, &st, err);
    if (rc)
        return rc;
    if ((rc = sqlite3_bind_int64(st, 1, kind)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 2, n)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[sid].name, rc);
        stmt_done(st);
        return rc;
    }
    if ((rc = run(s, sid, st, err)))
        return rc;
    *dropped = sqlite3_changes(s->db);
    return 0;
}

/* Inside a write transaction: brings the unsent messages down to max_pending
 * (0 = no bound), roll-ups first, then the oldest records. */
static int outbox_bound(store *s, int64_t max_pending, store_outbox_drops *drops,
                        char err[256])
{
    if (max_pending <= 0)
        return 0;
    int64_t n = 0, d = 0;
    int rc = count_pending(s, &n, err);
    if (rc || n <= max_pending)
        return rc;
    if ((rc = outbox_drop(s, ST_OUTBOX_DROP_KIND, STORE_OUTBOX_ROLLUP, n - max_pending, &d, err)))
        return rc;
    drops->rollups += d;
    n -= d;
    if (n > max_pending) {
        if ((rc = outbox_drop(s, ST_OUTBOX_DROP_NOT_KIND, STORE_OUTBOX_ROLLUP, n - max_pending,
                              &d, err)))
            return rc;
        drops->records += d;
    }
    return 0;
}

static int outbox_insert(store *s, const char *topic, const void *payload, size_t payload_len,
                         store_outbox_kind kind, int64_t *id_out, char err[256])
{
    sqlite3_stmt *st = NULL;
    int rc = stmt_get(s, ST_OUTBOX_PUT_KIND, &st, err);
    if (rc)
        return rc;
    if ((rc = sqlite3_bind_text(st, 1, topic, -1, SQLITE_STATIC)) != SQLITE_OK ||
        (rc = payload_len ? sqlite3_bind_blob(st, 2, payload, (int)payload_len, SQLITE_STATIC)
                          : sqlite3_bind_zeroblob(st, 2, 0)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 3, now_ms(s))) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 4, (int64_t)kind)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_OUTBOX_PUT_KIND].name, rc);
        stmt_done(st);
        return rc;
    }
    if ((rc = run(s, ST_OUTBOX_PUT_KIND, st, err)))
        return rc;
    if (id_out)
        *id_out = sqlite3_last_insert_rowid(s->db);
    return 0;
}

int store_outbox_put_kind(store *s, const char *topic, const void *payload, size_t payload_len,
                          store_outbox_kind kind, int64_t max_pending, int64_t *id_out,
                          store_outbox_drops *drops, char err[256])
{
    store_outbox_drops d = {0};
    int rc;
    if ((unsigned)kind > STORE_OUTBOX_ROLLUP) {
        snprintf(err, 256, "store: outbox kind %d is not record (0) or rollup (1)", (int)kind);
        return STORE_EINVAL;
    }
    if ((rc = check_outbox_msg(topic, payload, payload_len, err)))
        return rc;
    lock(s);
    if ((rc = tx_begin(s, true, err)))
        goto out;
    if ((rc = outbox_insert(s, topic, payload, payload_len, kind, id_out, err)) ||
        (rc = outbox_bound(s, max_pending, &d, err)) || (rc = tx_commit(s, err))) {
        tx_rollback(s, err);
        goto out;
    }
    if (drops) {
        drops->rollups += d.rollups;
        drops->records += d.records;
    }
out:
    unlock(s);
    return rc;
}

static double col_measure(sqlite3_stmt *st, int col)
{
    return sqlite3_column_type(st, col) == SQLITE_NULL ? NAN : sqlite3_column_double(st, col);
}

/* Up to max_n requests not yet exported, oldest first. */
static int read_to_export(store *s, size_t max_n, store_request_row *v, size_t *n_out,
                          char err[256])
{
    *n_out = 0;
    sqlite3_stmt *st = NULL;
    int rc = stmt_get(s, ST_REQUESTS_TO_EXPORT, &st, err);
    if (rc)
        return rc;
    if ((rc = bind_limit(st, 1, max_n)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_REQUESTS_TO_EXPORT].name, rc);
        stmt_done(st);
        return rc;
    }
    size_t n = 0;
    while (n < max_n && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        store_request_row *r = &v[n];
        memset(r, 0, sizeof *r);
        char route[16];
        if ((rc = col_text(s, st, 1, r->id, sizeof r->id, err)) ||
            (rc = col_text(s, st, 2, r->session_id, sizeof r->session_id, err)) ||
            (rc = col_text(s, st, 3, route, sizeof route, err)) ||
            (rc = col_text(s, st, 4, r->reason, sizeof r->reason, err)) ||
            (rc = col_text(s, st, 5, r->model, sizeof r->model, err)) ||
            (rc = col_text(s, st, 14, r->status, sizeof r->status, err)))
            goto done;
        if (route_parse(route, &r->route) != 0) {
            snprintf(err, 256, "%s: request '%.64s' has unknown route '%s'", s->path, r->id,
                     route);
            rc = STORE_ECORRUPT;
            goto done;
        }
        r->rowid = sqlite3_column_int64(st, 0);
        r->prompt_tokens = sqlite3_column_int64(st, 6);
        r->completion_tokens = sqlite3_column_int64(st, 7);
        r->cached_tokens = sqlite3_column_int64(st, 8);
        r->ttft_ms = col_measure(st, 9);
        r->decode_tok_s = col_measure(st, 10);
        r->token_p50_ms = col_measure(st, 11);
        r->token_p95_ms = col_measure(st, 12);
        r->cost_usd = sqlite3_column_double(st, 13);
        r->created_ms = sqlite3_column_int64(st, 15);
        n++;
    }
    if (n < max_n && rc != SQLITE_DONE) {
        rc = db_fail(s, err, stmts[ST_REQUESTS_TO_EXPORT].name, rc);
        goto done;
    }
    rc = 0;
    *n_out = n;
done:
    stmt_done(st);
    return rc;
}

int store_requests_export(store *s, const char *topic, size_t max_n, store_request_format_fn fmt,
                          void *ud, int64_t max_pending, size_t *n_out,
                          store_outbox_drops *drops, char err[256])
{
    *n_out = 0;
    int rc;
    if ((rc = check_cstr(err, "outbox topic", topic, STORE_TOPIC_MAX, false)))
        return rc;
    if (!fmt || max_n == 0 || max_n > STORE_EXPORT_MAX) {
        snprintf(err, 256, "store: request export of %zu rows (1..%d) without a formatter", max_n,
                 STORE_EXPORT_MAX);
        return STORE_EINVAL;
    }
    store_request_row *v = malloc(max_n * sizeof *v);
    if (!v) {
        snprintf(err, 256, "store: export requests: out of memory");
        return STORE_ENOMEM;
    }
    store_outbox_drops d = {0};
    size_t n = 0;
    lock(s);
    if ((rc = tx_begin(s, true, err)))
        goto out;
    if ((rc = read_to_export(s, max_n, v, &n, err)))
        goto rollback;
    for (size_t i = 0; i < n; i++) {
        char *payload = NULL;
        size_t len = 0;
        if (fmt(ud, &v[i], &payload, &len, err) != 0) {
            free(payload);
            rc = STORE_EINVAL;
            goto rollback;
        }
        rc = check_outbox_msg(topic, payload, len, err);
        if (!rc)
            rc = outbox_insert(s, topic, payload, len, STORE_OUTBOX_RECORD, NULL, err);
        free(payload);
        if (rc)
            goto rollback;
        sqlite3_stmt *st = NULL;
        if ((rc = stmt_get(s, ST_REQUEST_EXPORTED, &st, err)))
            goto rollback;
        if ((rc = sqlite3_bind_int64(st, 1, v[i].rowid)) != SQLITE_OK) {
            rc = db_fail(s, err, stmts[ST_REQUEST_EXPORTED].name, rc);
            stmt_done(st);
            goto rollback;
        }
        if ((rc = run(s, ST_REQUEST_EXPORTED, st, err)))
            goto rollback;
    }
    if (n && (rc = outbox_bound(s, max_pending, &d, err)))
        goto rollback;
    if ((rc = tx_commit(s, err)))
        goto rollback;
    *n_out = n;
    if (drops) {
        drops->rollups += d.rollups;
        drops->records += d.records;
    }
    goto out;
rollback:
    tx_rollback(s, err);
out:
    unlock(s);
    free(v);
    return rc;
}

/* ---- inbox of fleet commands ---------------------------------------------- */

int store_inbox_put(store *s, const char *topic, const void *payload, size_t payload_len,
                    int64_t max_rows, int64_t *id_out, char err[256])
{
    int rc;
    if ((rc = check_outbox_msg(topic, payload, payload_len, err)))
        return rc;
    if (max_rows <= 0) {
        snprintf(err, 256, "store: inbox bound %" PRId64 " is not positive", max_rows);
        return STORE_EINVAL;
    }
    sqlite3_stmt *st = NULL;
    lock(s);
    if ((rc = stmt_get(s, ST_INBOX_PUT, &st, err)))
        goto out;
    if ((rc = bind_msg(s, st, topic, payload, payload_len)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 4, max_rows)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_INBOX_PUT].name, rc);
        stmt_done(st);
        goto out;
    }
    if ((rc = run(s, ST_INBOX_PUT, st, err)))
        goto out;
    if (sqlite3_changes(s->db) == 0) {
        snprintf(err, 256, "%s: the inbox holds %" PRId64 " fleet commands already", s->path,
                 max_rows);
        rc = STORE_EFULL;
        goto out;
    }
    if (id_out)
        *id_out = sqlite3_last_insert_rowid(s->db);
out:
    unlock(s);
    return rc;
}

int store_inbox_peek(store *s, size_t max_n, store_outbox_msg **out, size_t *n_out,
                     char err[256])
{
    return outbox_peek(s, ST_INBOX_PEEK, 0, max_n, out, n_out, err);
}

int store_inbox_done(store *s, int64_t id, const char *key, const char *value, char err[256])
{
    int rc;
    if (key && ((rc = check_cstr(err, "setting key", key, STORE_TITLE_MAX, false)) ||
                (rc = check_cstr(err, "setting value", value, STORE_CONTENT_MAX, true))))
        return rc;
    sqlite3_stmt *st = NULL;
    lock(s);
    if ((rc = tx_begin(s, true, err)))
        goto out;
    if ((rc = stmt_get(s, ST_INBOX_DELETE, &st, err)))
        goto rollback;
    if ((rc = sqlite3_bind_int64(st, 1, id)) != SQLITE_OK) {
        rc = db_fail(s, err, stmts[ST_INBOX_DELETE].name, rc);
        stmt_done(st);
        goto rollback;
    }
    if ((rc = run(s, ST_INBOX_DELETE, st, err)))
        goto rollback;
    if (key && (rc = setting_put(s, key, value, err)))
        goto rollback;
    if ((rc = tx_commit(s, err)))
        goto rollback;
    goto out;
rollback:
    tx_rollback(s, err);
out:
    unlock(s);
    return rc;
}
