/*
 * pii.h - find personal data in request text (the pii_ module): email
 * addresses, phone numbers, payment card numbers, IBANs and national IDs.
 *
 * The routing policy sees the kinds found (req.pii) and keeps such requests
 * on the device; the hook-redact plugin replaces them ("[EMAIL]", ...)
 * before text leaves it. Detection is PCRE2 (JIT-compiled) for the shape
 * plus a check in C wherever the format has one: Luhn and issuer ranges for
 * cards, ISO 13616 mod-97 and the country's length for IBANs, the SSA's
 * invalid ranges for US SSNs, the mod-23 control letter for Spanish DNI/NIE,
 * Verhoeff for Indian Aadhaar numbers. A shape without its check is not
 * reported: false positives (order numbers, dates, versions) cost more than
 * a missed oddly written number, since they pin ordinary requests locally.
 *
 * Text is bytes (UTF-8 or not; nothing is decoded), offsets and lengths are
 * in bytes. Findings never overlap: where two detectors claim the same bytes
 * the earlier kind in pii_kind wins. A pii handle is immutable after
 * pii_new(), so one handle may scan from many threads at once.
 */
#ifndef OUTPOST_PII_H
#define OUTPOST_PII_H

#include <stddef.h>

enum {
    PII_OK = 0,
    PII_ENOMEM = -1,
    PII_EREGEX = -2, /* a pattern failed to compile or match: a bug of ours */
    PII_EUSAGE = -3,
};

/* In priority order (see above). */
typedef enum pii_kind {
    PII_EMAIL,
    PII_IBAN,
    PII_CARD,
    PII_NATIONAL_ID, /* US SSN, Spanish DNI/NIE, Indian Aadhaar */
    PII_PHONE,
    PII_KIND_COUNT,
} pii_kind;

/* "email", "iban", "card", "national_id", "phone": the names the policy
 * sees in req.pii. The tag is what pii_redact() writes: "[EMAIL]", ... */
const char *pii_kind_name(pii_kind k);
const char *pii_kind_tag(pii_kind k);
int pii_kind_parse(const char *s, pii_kind *out); /* 0 or PII_EUSAGE */

typedef struct pii_finding {
    pii_kind kind;
    size_t offset; /* bytes from the start of the text */
    size_t len;
} pii_finding;

typedef struct pii pii;

int pii_new(pii **out, char err[256]);
void pii_free(pii *d);

/* All findings in text, sorted by offset, in a malloc'd array the caller
 * frees (NULL when there are none). */
int pii_scan(const pii *d, const char *text, size_t len, pii_finding **out, size_t *n_out,
             char err[256]);

/* text with every finding replaced by its kind's tag, as a malloc'd
 * NUL-terminated string the caller frees. */
int pii_redact(const pii *d, const char *text, size_t len, char **out, size_t *out_len,
               char err[256]);

/* The distinct kinds among findings, in pii_kind order, as names (for
 * pol_req.pii); returns how many were written to names. */
size_t pii_kind_names(const pii_finding *f, size_t n, const char *names[PII_KIND_COUNT]);

#endif
