/*
 * fuzz_ota_install.c - libFuzzer target for the OTA install's parsers: the
 * A/B state file (ota_install_state_parse) and the binary chunk message
 * (ota_xfer_msg_parse). The first input byte picks the parser. Neither may
 * crash, read out of bounds or leak on any input; an accepted chunk's data
 * must lie inside the message.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "install.h"
#include "transfer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char err[256];
    if (data[0] & 1) {
        char *text = malloc(size);
        if (!text)
            return 0;
        memcpy(text, data + 1, size - 1);
        text[size - 1] = '\0';
        ota_install_state st;
        ota_install_state_parse(text, strlen(text), "fuzz", &st, err);
        free(text);
    } else {
        uint8_t id[OTA_XFER_ID_BYTES];
        uint32_t index;
        const uint8_t *chunk;
        size_t n;
        if (ota_xfer_msg_parse(data + 1, size - 1, id, &index, &chunk, &n, err) == OTA_OK &&
            (chunk < data + 1 || chunk + n > data + size))
            __builtin_trap();
    }
    return 0;
}
