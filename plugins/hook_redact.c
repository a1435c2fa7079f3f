/*
 * hook_redact.c - the `hook-redact` plugin: when the routing policy asks for
 * it (outpost_outbound.redact), replace the personal data in a request
 * about to leave the device - every message's content and the plain
 * prompt - with the agent's tags ("[EMAIL]", "[CARD]", ...).
 *
 * Detection is the agent's own (host->pii_redact, agent/pii.h), so what the
 * policy saw in req.pii and what is replaced here are the same findings.
 * With redact false the hook does nothing at all.
 *
 * Ownership follows outpost_outbound: a text with findings is swapped for
 * the redacted buffer the host allocated, and the old one is given back
 * with host->free; a text without findings keeps its buffer (the redacted
 * copy is freed at once). A failure midway leaves every replaced buffer in
 * place and valid, so the agent frees a consistent request; the request is
 * then answered locally (the ABI's hook rule), never sent half-redacted.
 * The instance only borrows the host table.
 */
#include "outpost_plugin.h"

#include <stdio.h>
#include <stdlib.h>

#define HOOK_NAME "hook-redact"

typedef struct redact_inst {
    const outpost_host *host;
} redact_inst;

/* The host must be new enough to have pii_redact, and offer it. */
static int redact_open(const outpost_host *host, void **inst, char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    if (!inst) {
        snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, HOOK_NAME ": open: no instance pointer given");
        return OUTPOST_EINPUT;
    }
    *inst = NULL;
    if (!host || host->struct_size < offsetof(outpost_host, pii_redact) + sizeof host->pii_redact ||
        !host->pii_redact || !host->alloc || !host->free) {
        snprintf(err, OUTPOST_PLUGIN_ERR_SIZE,
                 HOOK_NAME ": the agent offers no PII detector (host pii_redact, alloc, free)");
        return OUTPOST_EINPUT;
    }
    redact_inst *in = calloc(1, sizeof *in);
    if (!in) {
        snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, HOOK_NAME ": out of memory");
        return OUTPOST_ENOMEM;
    }
    in->host = host;
    *inst = in;
    return OUTPOST_OK;
}

static void redact_close(void *inst)
{
    free(inst);
}

/* Redact one text in place (per the ownership rule above); adds the number
 * of findings replaced to *n_total. what names it in errors. */
static int redact_text(const outpost_host *h, const char **text, size_t *len, size_t *n_total,
                       const char *what, char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    if (!*text)
        return OUTPOST_OK;
    char *out = NULL;
    size_t out_len = 0, n_found = 0;
    char herr[OUTPOST_PLUGIN_ERR_SIZE] = "";
    int rc = h->pii_redact(h->ctx, *text, *len, &out, &out_len, &n_found, herr);
    if (rc != OUTPOST_OK || !out) {
        herr[sizeof herr - 1] = '\0';
        snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, HOOK_NAME ": %s: %s", what,
                 herr[0] ? herr : "the PII detector failed");
        if (out)
            h->free(h->ctx, out);
        return rc != OUTPOST_OK ? rc : OUTPOST_ENOMEM;
    }
    if (n_found == 0) {
        h->free(h->ctx, out);
        return OUTPOST_OK;
    }
    /* The old buffer came from the host's alloc (or is the agent's, which
     * frees whatever it finds here afterwards): give it back now. */
    h->free(h->ctx, (void *)*text);
    *text = out;
    *len = out_len;
    *n_total += n_found;
    return OUTPOST_OK;
}

static int redact_outbound(void *inst, outpost_outbound *req, char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    if (!inst || !req) {
        snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, HOOK_NAME ": outbound: no instance or request");
        return OUTPOST_EINPUT;
    }
    if (!req->redact)
        return OUTPOST_OK;
    const outpost_host *h = ((const redact_inst *)inst)->host;
    if (req->n_messages && !req->messages) {
        snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, HOOK_NAME ": %zu messages but no array",
                 req->n_messages);
        return OUTPOST_EINPUT;
    }
    char what[32];
    for (size_t i = 0; i < req->n_messages; i++) {
        snprintf(what, sizeof what, "message %zu", i);
        int rc = redact_text(h, &req->messages[i].content, &req->messages[i].len,
                             &req->n_redacted, what, err);
        if (rc)
            return rc;
    }
    const char *prompt = req->prompt;
    int rc = redact_text(h, &prompt, &req->prompt_len, &req->n_redacted, "prompt", err);
    req->prompt = (char *)prompt;
    return rc;
}

static const outpost_hook_ops redact_ops = {
    .open = redact_open,
    .close = redact_close,
    .outbound = redact_outbound,
};

OUTPOST_PLUGIN_EXPORT(hook_redact_plugin) = {
    .abi_version = OUTPOST_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(outpost_plugin),
    .name = HOOK_NAME,
    .version = "1.0.0",
    .description = "replaces PII in requests leaving the device when the policy asks",
    .kind = OUTPOST_PLUGIN_HOOK,
    .hook = &redact_ops,
};
