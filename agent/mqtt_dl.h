/*
 * mqtt_dl.h - Paho C loaded on first use (mqtt_dl.c explains why).
 *
 * Code that talks MQTT includes <MQTTAsync.h> and calls Paho as usual; the
 * calls land in mqtt_dl.c, which loads libpaho-mqtt3as with dlopen the first
 * time. mqtt_dl_load() loads it up front to report a missing library as one
 * clear line (fleet_open and the fleet CLI call it before anything else).
 */
#ifndef OUTPOST_MQTT_DL_H
#define OUTPOST_MQTT_DL_H

#include <MQTTAsync.h>
#include <stdbool.h>
#include <stddef.h>

/* 0 when Paho is loaded (now or earlier); -1 with err saying why not. */
int mqtt_dl_load(char err[256]);

#endif
