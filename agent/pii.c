/*
 * pii.c - the PII detector (see pii.h): one table of detectors, each a PCRE2
 * pattern for the shape and an optional C check for what a regex cannot
 * see (checksums, issuer ranges, invalid ranges).
 *
 * Patterns are compiled without PCRE2_UTF, so arbitrary bytes are fine and
 * every boundary is an explicit ASCII lookaround: a match never starts or
 * ends inside a longer run of letters and digits, so "ID4111111111111111X"
 * or a 20-digit number is nothing. Each pattern is written so that its
 * pieces cannot split the same digits two ways (separators are mandatory
 * between groups), which keeps backtracking linear; a match limit guards
 * the rest. Detectors run in pii_kind order over the whole text and a
 * bitmap of claimed bytes drops later overlapping matches.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "pii.h"

#include <pcre2.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* No pattern of ours needs more; a pathological input stops here. */
#define PII_MATCH_LIMIT 100000u
#define PII_OVECTOR_PAIRS 16

static const char *const kind_names[PII_KIND_COUNT] = {
    [PII_EMAIL] = "email",
    [PII_IBAN] = "iban",
    [PII_CARD] = "card",
    [PII_NATIONAL_ID] = "national_id",
    [PII_PHONE] = "phone",
};

static const char *const kind_tags[PII_KIND_COUNT] = {
    [PII_EMAIL] = "[EMAIL]",
    [PII_IBAN] = "[IBAN]",
    [PII_CARD] = "[CARD]",
    [PII_NATIONAL_ID] = "[NATIONAL_ID]",
    [PII_PHONE] = "[PHONE]",
};

const char *pii_kind_name(pii_kind k)
{
    return (unsigned)k < PII_KIND_COUNT ? kind_names[k] : "?";
}

const char *pii_kind_tag(pii_kind k)
{
    return (unsigned)k < PII_KIND_COUNT ? kind_tags[k] : "[PII]";
}

int pii_kind_parse(const char *s, pii_kind *out)
{
    for (int i = 0; s && i < PII_KIND_COUNT; i++)
        if (strcmp(s, kind_names[i]) == 0) {
            *out = (pii_kind)i;
            return PII_OK;
        }
    return PII_EUSAGE;
}

/* ---- checks -------------------------------------------------------------- */

/* A match as the checks see it; a check may shrink [start, end). */
typedef struct span {
    const char *text;
    size_t start, end;
} span;

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* The digits of s[start, end), at most cap of them; returns their count. */
static size_t digits_of(const span *m, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = m->start; i < m->end; i++)
        if (is_digit(m->text[i])) {
            if (n == cap)
                return cap + 1;
            out[n++] = m->text[i];
        }
    return n;
}

/* Luhn (ISO/IEC 7812-1 annex B): double every second digit from the right. */
static bool luhn_ok(const char *d, size_t n)
{
    unsigned sum = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned v = (unsigned)(d[n - 1 - i] - '0');
        if (i & 1) {
            v *= 2;
            if (v > 9)
                v -= 9;
        }
        sum += v;
    }
    return sum % 10 == 0;
}

/* Issuer ranges (IIN prefixes) and the lengths each network issues. A
 * Luhn-valid number outside every range is far more often an order or
 * tracking number than a card. */
typedef struct card_range {
    unsigned lo, hi;     /* first `digits` digits, as a number */
    unsigned digits;
    uint32_t len_mask;   /* bit L set: length L is issued */
} card_range;

#define LENS(lo, hi) ((uint32_t)(((1u << ((hi) + 1)) - 1) & ~((1u << (lo)) - 1)))
static const card_range card_ranges[] = {
    {4, 4, 1, (1u << 13) | (1u << 16) | (1u << 19)}, /* Visa */
    {51, 55, 2, LENS(16, 16)},                       /* Mastercard */
    {2221, 2720, 4, LENS(16, 16)},                   /* Mastercard 2-series */
    {34, 34, 2, LENS(15, 15)},                       /* American Express */
    {37, 37, 2, LENS(15, 15)},
    {300, 305, 3, LENS(14, 19)},                     /* Diners Club */
    {36, 36, 2, LENS(14, 19)},
    {38, 39, 2, LENS(16, 19)},
    {6011, 6011, 4, LENS(16, 19)},                   /* Discover */
    {644, 649, 3, LENS(16, 19)},
    {65, 65, 2, LENS(16, 19)},
    {3528, 3589, 4, LENS(16, 19)},                   /* JCB */
    {62, 62, 2, LENS(16, 19)},                       /* UnionPay */
    {2200, 2204, 4, LENS(16, 19)},                   /* Mir */
    {50, 50, 2, LENS(13, 19)},                       /* Maestro */
    {56, 58, 2, LENS(13, 19)},
    {639, 639, 3, LENS(13, 19)},
    {67, 67, 2, LENS(13, 19)},
};

static bool check_card(span *m)
{
    char d[20];
    size_t n = digits_of(m, d, 19);
    if (n < 13 || n > 19 || !luhn_ok(d, n))
        return false;
    for (size_t i = 0; i < sizeof card_ranges / sizeof card_ranges[0]; i++) {
        const card_range *r = &card_ranges[i];
        unsigned prefix = 0;
        for (unsigned k = 0; k < r->digits; k++)
            prefix = prefix * 10 + (unsigned)(d[k] - '0');
        if (prefix >= r->lo && prefix <= r->hi && (r->len_mask >> n) & 1)
            return true;
    }
    return false;
}

/* IBAN lengths by country, from the ISO 13616 registry (SWIFT). A country
 * not listed has no IBAN, so its "IBAN" is not one. */
static const char iban_lengths[] =
    "AD24AE23AL28AT20AZ28BA20BE16BG22BH22BI27BR29BY28CH21CR22CY28CZ24DE22DJ27"
    "DK18DO28EE20EG29ES24FI18FK18FO18FR27GB22GE22GI23GL18GR27GT28HR21HU28IE22"
    "IL23IQ23IS26IT27JO30KW30KZ20LB28LC32LI21LT20LU20LV21LY25MC27MD24ME22MK19"
    "MN20MR27MT31MU30NL18NO15OM23PK24PL28PS29PT25QA29RO24RS22RU33SA24SC31SD18"
    "SE24SI19SK24SM27SO23ST25SV28TL23TN24TR26UA29VA22VG24XK20";

static size_t iban_length(const char *cc)
{
    for (const char *e = iban_lengths; *e; e += 4)
        if (e[0] == cc[0] && e[1] == cc[1])
            return (size_t)((e[2] - '0') * 10 + (e[3] - '0'));
    return 0;
}

/* ISO 13616 / ISO 7064 MOD 97-10: the first four characters move to the
 * end, letters become 10..35, and the whole number mod 97 must be 1. */
static bool iban_mod97_ok(const char *s, size_t n)
{
    unsigned rem = 0;
    for (size_t k = 0; k < n; k++) {
        char c = s[(k + 4) % n];
        if (is_digit(c))
            rem = (rem * 10 + (unsigned)(c - '0')) % 97;
        else
            rem = (rem * 100 + (unsigned)(c - 'A' + 10)) % 97;
    }
    return rem == 1;
}

static bool check_iban(span *m)
{
    size_t want = iban_length(m->text + m->start);
    if (want == 0)
        return false;
    char compact[40];
    size_t n = 0, end = m->start;
    for (size_t i = m->start; i < m->end && n < want; i++) {
        if (m->text[i] == ' ')
            continue;
        compact[n++] = m->text[i];
        end = i + 1;
    }
    /* Longer than the country's IBAN: the pattern ran into a following
     * word; cut it off, but only where a group of the print form ends. */
    if (n < want || (end < m->end && m->text[end] != ' '))
        return false;
    if (!iban_mod97_ok(compact, n))
        return false;
    m->end = end;
    return true;
}

/* US SSN (SSA): area 000, 666 and 900-999, group 00 and serial 0000 are
 * never issued; two numbers printed on sample cards are void too. */
static bool check_ssn(span *m)
{
    char d[10];
    if (digits_of(m, d, 9) != 9)
        return false;
    unsigned area = (unsigned)((d[0] - '0') * 100 + (d[1] - '0') * 10 + (d[2] - '0'));
    if (area == 0 || area == 666 || area >= 900)
        return false;
    if (d[3] == '0' && d[4] == '0')
        return false;
    if (memcmp(d + 5, "0000", 4) == 0)
        return false;
    return memcmp(d, "078051120", 9) != 0 && memcmp(d, "219099999", 9) != 0;
}

/* Spanish DNI: eight digits and the letter at (number mod 23) of a fixed
 * table; an NIE maps its leading X, Y, Z to 0, 1, 2 and checks the same. */
static bool check_dni(span *m)
{
    static const char letters[] = "TRWAGMYFPDXBNJZSQVHLCKE";
    unsigned long v = 0;
    char control = 0;
    for (size_t i = m->start; i < m->end; i++) {
        char c = m->text[i];
        if (is_digit(c))
            v = v * 10 + (unsigned long)(c - '0');
        else if (i == m->start && c >= 'X' && c <= 'Z')
            v = (unsigned long)(c - 'X');
        else if (c >= 'A' && c <= 'Z')
            control = c;
    }
    return control && letters[v % 23] == control;
}

/* Verhoeff's dihedral-group check digit (used by Aadhaar, UIDAI). */
static bool verhoeff_ok(const char *d, size_t n)
{
    static const uint8_t mul[10][10] = {
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {1, 2, 3, 4, 0, 6, 7, 8, 9, 5},
        {2, 3, 4, 0, 1, 7, 8, 9, 5, 6}, {3, 4, 0, 1, 2, 8, 9, 5, 6, 7},
        {4, 0, 1, 2, 3, 9, 5, 6, 7, 8}, {5, 9, 8, 7, 6, 0, 4, 3, 2, 1},
        {6, 5, 9, 8, 7, 1, 0, 4, 3, 2}, {7, 6, 5, 9, 8, 2, 1, 0, 4, 3},
        {8, 7, 6, 5, 9, 3, 2, 1, 0, 4}, {9, 8, 7, 6, 5, 4, 3, 2, 1, 0},
    };
    static const uint8_t perm[8][10] = {
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {1, 5, 7, 6, 2, 8, 3, 0, 9, 4},
        {5, 8, 0, 3, 7, 9, 6, 1, 4, 2}, {8, 9, 1, 6, 0, 4, 3, 5, 2, 7},
        {9, 4, 5, 3, 1, 2, 6, 8, 7, 0}, {4, 2, 8, 6, 5, 7, 3, 9, 0, 1},
        {2, 7, 9, 3, 8, 0, 6, 4, 1, 5}, {7, 0, 4, 6, 9, 1, 3, 2, 5, 8},
    };
    unsigned c = 0;
    for (size_t i = 0; i < n; i++)
        c = mul[c][perm[i % 8][d[n - 1 - i] - '0']];
    return c == 0;
}

static bool check_aadhaar(span *m)
{
    char d[13];
    return digits_of(m, d, 12) == 12 && verhoeff_ok(d, 12);
}

/* Addresses that are really file names: "logo@2x.png". */
static bool check_email(span *m)
{
    static const char *const not_tlds[] = {"png", "jpg", "jpeg", "gif", "svg", "webp",
                                           "bmp", "ico", "tif", "tiff"};
    size_t dot = m->end;
    while (dot > m->start && m->text[dot - 1] != '.')
        dot--;
    size_t tld_len = m->end - dot;
    for (size_t i = 0; i < sizeof not_tlds / sizeof not_tlds[0]; i++)
        if (strlen(not_tlds[i]) == tld_len &&
            strncasecmp(m->text + dot, not_tlds[i], tld_len) == 0)
            return false;
    return true;
}

/* International numbers: E.164 allows at most 15 digits; fewer than 8 is a
 * short code or not a phone number. A "(0)" trunk digit does not count. */
static bool check_phone_intl(span *m)
{
    size_t n = 0;
    const char *t = m->text;
    size_t i = m->start;
    if (t[i] == '+')
        i++;
    else
        i += 2; /* "00" */
    for (; i < m->end; i++) {
        if (t[i] == '(' && i + 2 < m->end && t[i + 1] == '0' && t[i + 2] == ')') {
            i += 2;
            continue;
        }
        n += is_digit(t[i]);
    }
    return n >= 8 && n <= 15;
}

/* National numbers behind a trunk 0: 10 to 12 digits across most of
 * Europe. The rare 9-digit ones are given up: that length is also a
 * dashed ID or a date with a time ("078-05-1120", "01-02-2024 9"). */
static bool check_phone_trunk(span *m)
{
    char d[16];
    size_t n = digits_of(m, d, 15);
    return n >= 10 && n <= 12;
}

/* ---- the detector table -------------------------------------------------- */

/* A match may not start right after, or end right before, a letter or
 * digit, nor continue a decimal, grouped or dashed number on either side;
 * digits after a '+' belong to a phone number. */
#define PRE "(?<![0-9A-Za-z_+]|[0-9][.,-])"
#define POST "(?![0-9A-Za-z_]|[.,-][0-9])"
/* For IDs made of digit groups: not part of a longer run of such groups
 * either ("matrix 2024 1234 5678 9012" holds no Aadhaar number). */
#define PRE_GROUPS "(?<![0-9A-Za-z_+]|[0-9][ .,-])"
#define POST_GROUPS "(?![0-9A-Za-z_]|[ .,-][0-9])"

typedef struct detector {
    pii_kind kind;
    const char *pattern;
    bool (*check)(span *m);
} detector;

static const detector detectors[] = {
    {PII_EMAIL,
     "(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
     "(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.){1,8}[A-Za-z]{2,24}"
     "(?![A-Za-z0-9_-]|\\.[A-Za-z0-9])",
     check_email},
    /* Print form groups of four, or the electronic form without spaces. */
    {PII_IBAN,
     "(?<![0-9A-Za-z_])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?"
     "(?![0-9A-Za-z_])",
     check_iban},
    /* 4-4-4-4-3, 4-4-4-(1..7), Amex/Diners 4-6-(4..5), or bare, with one
     * separator kind throughout. */
    {PII_CARD,
     PRE "(?:[0-9]{4}([ -])[0-9]{4}\\1[0-9]{4}\\1[0-9]{4}\\1[0-9]{3}"
     "|[0-9]{4}([ -])[0-9]{4}\\2[0-9]{4}\\2[0-9]{1,7}"
     "|[0-9]{4}([ -])[0-9]{6}\\3[0-9]{4,5}"
     "|[0-9]{13,19})" POST,
     check_card},
    {PII_NATIONAL_ID, PRE_GROUPS "[0-9]{3}([ -])[0-9]{2}\\1[0-9]{4}" POST_GROUPS, check_ssn},
    {PII_NATIONAL_ID, PRE "(?:[0-9]{8}|[XYZ]-?[0-9]{7})-?[A-HJ-NP-TV-Z]" POST, check_dni},
    {PII_NATIONAL_ID, PRE_GROUPS "[2-9][0-9]{3}([ -])[0-9]{4}\\1[0-9]{4}" POST_GROUPS,
     check_aadhaar},
    /* +CC or 00CC, digits in groups that separators (or parentheses) set
     * apart: "+1 (415) 555-0132", "+44 (0)20 7946 0958", "+4915112345678". */
    {PII_PHONE,
     "(?<![0-9A-Za-z_+])(?:\\+|00)[1-9][0-9]{0,14}"
     "(?:[ .-]?\\([0-9]{1,5}\\)|[ .-][0-9]{1,10}|(?<=\\))[0-9]{1,10}){0,7}" POST,
     check_phone_intl},
    /* North American: area and exchange codes start with 2-9, and a
     * separator is required, so a bare ten-digit number is not a phone. */
    {PII_PHONE,
     "(?<![0-9A-Za-z_+.-])(?:1[ .-]?)?(?:\\([2-9][0-9]{2}\\)[ .-]?|[2-9][0-9]{2}[ .-])"
     "[2-9][0-9]{2}[ .-][0-9]{4}" POST,
     NULL},
    /* Trunk-prefixed national numbers ("020 7946 0958", "0171 1234567",
     * "06 12 34 56 78"): one separator kind, not followed by ':' (a time). */
    {PII_PHONE,
     "(?<![0-9A-Za-z_+.-])(?:0[1-9][0-9]{0,4}([ -])[0-9]{2,8}(?:\\1[0-9]{2,8}){0,4}"
     "|\\(0[1-9][0-9]{0,4}\\) ?[0-9]{2,8}(?:[ -][0-9]{2,8}){0,3})"
     "(?![0-9A-Za-z_:]|[.,-][0-9])",
     check_phone_trunk},
};

#define N_DETECTORS (sizeof detectors / sizeof detectors[0])

struct pii {
    pcre2_code *code[N_DETECTORS];
    pcre2_match_context *mctx;
};

void pii_free(pii *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < N_DETECTORS; i++)
        pcre2_code_free(d->code[i]);
    pcre2_match_context_free(d->mctx);
    free(d);
}

int pii_new(pii **out, char err[256])
{
    *out = NULL;
    pii *d = calloc(1, sizeof *d);
    if (!d || !(d->mctx = pcre2_match_context_create(NULL))) {
        snprintf(err, 256, "pii: out of memory");
        pii_free(d);
        return PII_ENOMEM;
    }
    pcre2_set_match_limit(d->mctx, PII_MATCH_LIMIT);
    for (size_t i = 0; i < N_DETECTORS; i++) {
        int code;
        PCRE2_SIZE at;
        d->code[i] = pcre2_compile((PCRE2_SPTR)detectors[i].pattern, PCRE2_ZERO_TERMINATED,
                                   0, &code, &at, NULL);
        if (!d->code[i]) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(code, msg, sizeof msg);
            snprintf(err, 256, "pii: %s pattern %zu: %s at offset %zu",
                     kind_names[detectors[i].kind], i, (const char *)msg, (size_t)at);
            pii_free(d);
            return PII_EREGEX;
        }
        /* Without JIT support the interpreter gives the same matches. */
        (void)pcre2_jit_compile(d->code[i], PCRE2_JIT_COMPLETE);
    }
    *out = d;
    return PII_OK;
}

static int cmp_finding(const void *a, const void *b)
{
    const pii_finding *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static bool claimed(const uint8_t *bits, size_t start, size_t end)
{
    for (size_t i = start; i < end; i++)
        if (bits[i >> 3] & (1u << (i & 7)))
            return true;
    return false;
}

static void claim(uint8_t *bits, size_t start, size_t end)
{
    for (size_t i = start; i < end; i++)
        bits[i >> 3] |= (uint8_t)(1u << (i & 7));
}

int pii_scan(const pii *d, const char *text, size_t len, pii_finding **out, size_t *n_out,
             char err[256])
{
    *out = NULL;
    *n_out = 0;
    if (!d || (!text && len)) {
        snprintf(err, 256, "pii_scan: missing detector or text");
        return PII_EUSAGE;
    }
    if (len == 0)
        return PII_OK;
    int rc = PII_ENOMEM;
    pii_finding *found = NULL;
    size_t n = 0, cap = 0;
    uint8_t *bits = calloc(len / 8 + 1, 1);
    pcre2_match_data *md = pcre2_match_data_create(PII_OVECTOR_PAIRS, NULL);
    if (!bits || !md) {
        snprintf(err, 256, "pii_scan: out of memory for %zu bytes of text", len);
        goto fail;
    }
    for (size_t k = 0; k < N_DETECTORS; k++) {
        size_t at = 0;
        while (at < len) {
            int m = pcre2_match(d->code[k], (PCRE2_SPTR)text, len, at, 0, md, d->mctx);
            if (m == PCRE2_ERROR_NOMATCH)
                break;
            if (m == PCRE2_ERROR_MATCHLIMIT || m == PCRE2_ERROR_JIT_STACKLIMIT) {
                /* This start is too costly to decide: not reported, go on. */
                at++;
                continue;
            }
            if (m < 0) {
                PCRE2_UCHAR msg[128];
                pcre2_get_error_message(m, msg, sizeof msg);
                snprintf(err, 256, "pii_scan: %s pattern %zu: %s",
                         kind_names[detectors[k].kind], k, (const char *)msg);
                rc = PII_EREGEX;
                goto fail;
            }
            const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            span s = {.text = text, .start = ov[0], .end = ov[1]};
            at = ov[1] > ov[0] ? ov[1] : ov[0] + 1;
            if (detectors[k].check && !detectors[k].check(&s))
                continue;
            if (claimed(bits, s.start, s.end))
                continue;
            if (n == cap) {
                size_t nc = cap ? cap * 2 : 8;
                pii_finding *nf = realloc(found, nc * sizeof *nf);
                if (!nf) {
                    snprintf(err, 256, "pii_scan: out of memory for findings");
                    goto fail;
                }
                found = nf;
                cap = nc;
            }
            found[n++] = (pii_finding){detectors[k].kind, s.start, s.end - s.start};
            claim(bits, s.start, s.end);
        }
    }
    if (n > 1)
        qsort(found, n, sizeof *found, cmp_finding);
    free(bits);
    pcre2_match_data_free(md);
    *out = found;
    *n_out = n;
    return PII_OK;
fail:
    free(found);
    free(bits);
    pcre2_match_data_free(md);
    return rc;
}

int pii_redact(const pii *d, const char *text, size_t len, char **out, size_t *out_len,
               char err[256])
{
    *out = NULL;
    *out_len = 0;
    pii_finding *f;
    size_t n;
    int rc = pii_scan(d, text, len, &f, &n, err);
    if (rc)
        return rc;
    size_t size = len + 1;
    for (size_t i = 0; i < n; i++)
        size += strlen(kind_tags[f[i].kind]);
    char *buf = malloc(size);
    if (!buf) {
        free(f);
        snprintf(err, 256, "pii_redact: out of memory for %zu bytes", size);
        return PII_ENOMEM;
    }
    size_t at = 0, w = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(buf + w, text + at, f[i].offset - at);
        w += f[i].offset - at;
        size_t tl = strlen(kind_tags[f[i].kind]);
        memcpy(buf + w, kind_tags[f[i].kind], tl);
        w += tl;
        at = f[i].offset + f[i].len;
    }
    if (len > at)
        memcpy(buf + w, text + at, len - at);
    w += len - at;
    buf[w] = '\0';
    free(f);
    *out = buf;
    *out_len = w;
    return PII_OK;
}

size_t pii_kind_names(const pii_finding *f, size_t n, const char *names[PII_KIND_COUNT])
{
    bool seen[PII_KIND_COUNT] = {false};
    for (size_t i = 0; i < n; i++)
        if ((unsigned)f[i].kind < PII_KIND_COUNT)
            seen[f[i].kind] = true;
    size_t k = 0;
    for (int i = 0; i < PII_KIND_COUNT; i++)
        if (seen[i])
            names[k++] = kind_names[i];
    return k;
}
