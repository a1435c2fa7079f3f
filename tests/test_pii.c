/*
 * test_pii.c - the PII detector: real-looking positives of every kind are
 * found with exact offsets, and the usual look-alikes (order numbers,
 * dates, versions, addresses of images, numbers failing their checksums)
 * are not; redaction replaces exactly the findings.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "pii.h"

static int setup(void **state)
{
    char err[256];
    pii *d;
    if (pii_new(&d, err)) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    *state = d;
    return 0;
}

static int teardown(void **state)
{
    pii_free(*state);
    return 0;
}

/* The findings in text, as "kind:matched text" joined with '|'. */
static char *scan_str(const pii *d, const char *text)
{
    static char out[4096];
    char err[256];
    pii_finding *f;
    size_t n;
    assert_int_equal(pii_scan(d, text, strlen(text), &f, &n, err), PII_OK);
    out[0] = '\0';
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        assert_true(f[i].offset + f[i].len <= strlen(text));
        w += (size_t)snprintf(out + w, sizeof out - w, "%s%s:%.*s", i ? "|" : "",
                              pii_kind_name(f[i].kind), (int)f[i].len, text + f[i].offset);
    }
    free(f);
    return out;
}

/* text is exactly one finding of kind, spanning value, embedded in a sentence. */
static void expect_one(const pii *d, pii_kind kind, const char *value)
{
    char text[512], want[512];
    snprintf(text, sizeof text, "Please use %s, thanks.", value);
    snprintf(want, sizeof want, "%s:%s", pii_kind_name(kind), value);
    const char *got = scan_str(d, text);
    if (strcmp(got, want) != 0)
        fail_msg("in \"%s\": expected \"%s\", found \"%s\"", text, want, got);
}

static void expect_none(const pii *d, const char *text)
{
    const char *got = scan_str(d, text);
    if (got[0])
        fail_msg("in \"%s\": expected nothing, found \"%s\"", text, got);
}

/* No finding of kind in text (others may be there). */
static void expect_no_kind(const pii *d, const char *text, pii_kind kind)
{
    char err[256];
    pii_finding *f;
    size_t n;
    assert_int_equal(pii_scan(d, text, strlen(text), &f, &n, err), PII_OK);
    for (size_t i = 0; i < n; i++)
        if (f[i].kind == kind)
            fail_msg("in \"%s\": found a %s at %zu", text, pii_kind_name(kind), f[i].offset);
    free(f);
}

static void emails_are_found(void **state)
{
    expect_one(*state, PII_EMAIL, "jane.doe@example.com");
    expect_one(*state, PII_EMAIL, "first.last+newsletter@mail.example.co.uk");
    expect_one(*state, PII_EMAIL, "J_Smith-99@corp-mail.io");
}

static void phone_numbers_are_found(void **state)
{
    const char *phones[] = {
        "+1 (415) 555-0132", "+44 20 7946 0958", "+44 (0)20 7946 0958", "+4915112345678",
        "+33 6 12 34 56 78", "0049 30 12345678", "(415) 555-0132", "415-555-0132",
        "415.555.0132", "1-800-555-0199", "020 7946 0958", "06 12 34 56 78",
        "0171 1234567", "(030) 1234567",
    };
    for (size_t i = 0; i < sizeof phones / sizeof phones[0]; i++)
        expect_one(*state, PII_PHONE, phones[i]);
}

static void card_numbers_passing_luhn_are_found(void **state)
{
    const char *cards[] = {
        "4111 1111 1111 1111", "4111-1111-1111-1111", "5555555555554444",
        "3782 822463 10005", "6011111111111117", "4012888888881881",
    };
    for (size_t i = 0; i < sizeof cards / sizeof cards[0]; i++)
        expect_one(*state, PII_CARD, cards[i]);
}

static void ibans_passing_mod97_are_found(void **state)
{
    const char *ibans[] = {
        "DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "NL91 ABNA 0417 1643 00",
        "FR14 2004 1010 0505 0001 3M02 606", "CH93 0076 2011 6238 5295 7",
    };
    for (size_t i = 0; i < sizeof ibans / sizeof ibans[0]; i++)
        expect_one(*state, PII_IBAN, ibans[i]);
}

static void national_ids_with_valid_checks_are_found(void **state)
{
    expect_one(*state, PII_NATIONAL_ID, "536-22-4179"); /* US SSN */
    expect_one(*state, PII_NATIONAL_ID, "12345678Z");   /* DNI: 12345678 mod 23 = 14 */
    expect_one(*state, PII_NATIONAL_ID, "X1234567L");   /* NIE */
    expect_one(*state, PII_NATIONAL_ID, "2345 6789 0124"); /* Aadhaar (Verhoeff) */
}

static void cards_failing_luhn_or_issuer_are_ignored(void **state)
{
    expect_none(*state, "card 4111 1111 1111 1112 expired");
    expect_none(*state, "ref 1234567890123456");
    /* Luhn-valid, but no network issues numbers starting with 1, 9 or 7. */
    expect_none(*state, "tracking 1234567890123452");
    expect_none(*state, "parcel 9234567812345673");
    expect_none(*state, "order 7023847192654913");
    /* Visa prefix and Luhn-valid, but Visa never issues 15 digits. */
    expect_none(*state, "id 411111111111116");
}

static void order_numbers_dates_and_versions_are_ignored(void **state)
{
    const char *texts[] = {
        "Order #12345678 shipped on 2024-01-15 at 10:30:00.",
        "Invoice 2023-0001234, due 15.01.2024 or 01/02/2024 or 01-02-2024.",
        "Upgrade from v1.2.3 to 10.0.19045.3930 (Python 3.11.4, build 1.22.333.4444).",
        "Ping 192.168.1.100 and 10.0.0.1 every 1700000000123 ms.",
        "ISBN 978-3-16-148410-0, UUID 123e4567-e89b-12d3-a456-426614174000.",
        "Total $1,234,567.89; pi is 3.4111111111111111; 0.4111111111111111 too.",
        "A run of 12345678901234567890123 digits is not a card.",
        "Meet at 07:30 in room 0-12, dial 555-0132 internally, +1 2 is math.",
        "Retina images logo@2x.png and icon@3x.jpg; npm react@18.2.0; user@localhost.",
        "Hash 4111111111111111a and X4111111111111111.",
        "Times 2024-01-15T10:30:00Z, 20240115103000, 1705314600.",
        /* Aadhaar-valid "4987 1234 5605" inside a longer run of groups. */
        "Matrix rows 4987 1234 5605 7777 and 1111 4987 1234 5605.",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        expect_none(*state, texts[i]);
}

static void ids_failing_their_checks_are_ignored(void **state)
{
    expect_none(*state, "SSNs 000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000");
    expect_none(*state, "the sample card SSN 078-05-1120");
    expect_none(*state, "DNI 12345678A");
    expect_none(*state, "IBAN GB82 WEST 1234 5698 7654 33 (bad check digits)");
    /* Its digit groups may still look like a phone number ("0044 ..."). */
    expect_no_kind(*state, "IBAN DE89 3704 0044 0532 0130 01", PII_IBAN);
    expect_none(*state, "XX12 3456 7890 1234 5678 90 is no country");
    expect_none(*state, "Aadhaar 2345 6789 0125");
}

static void findings_are_sorted_and_do_not_overlap(void **state)
{
    const char *text = "Mail jane@example.com, call +1 (415) 555-0132, pay "
                       "DE89 3704 0044 0532 0130 00 with 4111 1111 1111 1111.";
    assert_string_equal(scan_str(*state, text),
                        "email:jane@example.com|phone:+1 (415) 555-0132|"
                        "iban:DE89 3704 0044 0532 0130 00|card:4111 1111 1111 1111");
}

static void iban_stops_at_its_country_length(void **state)
{
    /* Belgian IBANs are 16 characters: the next upper-case word is not part. */
    assert_string_equal(scan_str(*state, "to BE68 5390 0754 7034 CASH please"),
                        "iban:BE68 5390 0754 7034");
}

static void card_stops_before_a_trailing_group(void **state)
{
    assert_string_equal(scan_str(*state, "4111 1111 1111 1111 20 EUR"),
                        "card:4111 1111 1111 1111");
}

static void redact_replaces_each_finding_with_its_tag(void **state)
{
    const char *text = "Call +1 (415) 555-0132 or mail jane@example.com; SSN 536-22-4179.";
    char err[256], *out;
    size_t len;
    assert_int_equal(pii_redact(*state, text, strlen(text), &out, &len, err), PII_OK);
    assert_string_equal(out, "Call [PHONE] or mail [EMAIL]; SSN [NATIONAL_ID].");
    assert_int_equal(len, strlen(out));
    free(out);

    const char *clean = "Nothing personal here: version 1.2.3, 2024-01-15.";
    assert_int_equal(pii_redact(*state, clean, strlen(clean), &out, &len, err), PII_OK);
    assert_string_equal(out, clean);
    free(out);
}

static void arbitrary_bytes_are_scanned_safely(void **state)
{
    /* Invalid UTF-8 and NUL bytes around a real address. */
    const char text[] = "\xff\xfe\x00\x80jane@example.com\xc3\x28\x00 4111111111111111\xff";
    size_t len = sizeof text - 1;
    char err[256];
    pii_finding *f;
    size_t n;
    assert_int_equal(pii_scan(*state, text, len, &f, &n, err), PII_OK);
    assert_int_equal(n, 2);
    assert_int_equal(f[0].kind, PII_EMAIL);
    assert_int_equal(f[0].offset, 4);
    assert_int_equal(f[0].len, strlen("jane@example.com"));
    assert_int_equal(f[1].kind, PII_CARD);
    free(f);

    assert_int_equal(pii_scan(*state, "", 0, &f, &n, err), PII_OK);
    assert_int_equal(n, 0);
    assert_null(f);
}

static void large_text_scans_in_linear_time(void **state)
{
    /* 1 MiB of digits, separators and at-signs: the shapes that make a
     * careless pattern backtrack. The scan must finish and find the one
     * planted address. */
    size_t len = 1 << 20;
    char *text = malloc(len + 1);
    assert_non_null(text);
    const char junk[] = "1234 5678-90.12 +44 (0) 555 aaaa@@bbb. 0000 ";
    for (size_t i = 0; i < len; i++)
        text[i] = junk[i % (sizeof junk - 1)];
    const char *mail = " jane@example.com ";
    memcpy(text + len / 2, mail, strlen(mail));
    text[len] = '\0';
    char err[256];
    pii_finding *f;
    size_t n;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(pii_scan(*state, text, len, &f, &n, err), PII_OK);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    size_t emails = 0;
    for (size_t i = 0; i < n; i++)
        emails += f[i].kind == PII_EMAIL;
    assert_int_equal(emails, 1);
    print_message("1 MiB adversarial text scanned in %.1f ms, %zu findings\n", ms, n);
    free(f);
    free(text);
}

static void kind_names_round_trip_and_dedupe(void **state)
{
    (void)state;
    for (int k = 0; k < PII_KIND_COUNT; k++) {
        pii_kind back;
        assert_int_equal(pii_kind_parse(pii_kind_name((pii_kind)k), &back), PII_OK);
        assert_int_equal(back, k);
    }
    pii_kind back;
    assert_int_equal(pii_kind_parse("passport", &back), PII_EUSAGE);
    assert_string_equal(pii_kind_tag(PII_CARD), "[CARD]");
    pii_finding f[] = {{PII_PHONE, 0, 1}, {PII_EMAIL, 2, 1}, {PII_PHONE, 4, 1}};
    const char *names[PII_KIND_COUNT];
    assert_int_equal(pii_kind_names(f, 3, names), 2);
    assert_string_equal(names[0], "email");
    assert_string_equal(names[1], "phone");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(emails_are_found),
        cmocka_unit_test(phone_numbers_are_found),
        cmocka_unit_test(card_numbers_passing_luhn_are_found),
        cmocka_unit_test(ibans_passing_mod97_are_found),
        cmocka_unit_test(national_ids_with_valid_checks_are_found),
        cmocka_unit_test(cards_failing_luhn_or_issuer_are_ignored),
        cmocka_unit_test(order_numbers_dates_and_versions_are_ignored),
        cmocka_unit_test(ids_failing_their_checks_are_ignored),
        cmocka_unit_test(findings_are_sorted_and_do_not_overlap),
        cmocka_unit_test(iban_stops_at_its_country_length),
        cmocka_unit_test(card_stops_before_a_trailing_group),
        cmocka_unit_test(redact_replaces_each_finding_with_its_tag),
        cmocka_unit_test(arbitrary_bytes_are_scanned_safely),
        cmocka_unit_test(large_text_scans_in_linear_time),
        cmocka_unit_test(kind_names_round_trip_and_dedupe),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
