#!/bin/sh
# The image's entrypoint: `lora-studio serve --host 0.0.0.0` by default, or any lora-studio command given.
#
#   docker run … lora-studio                                  # the web UI (a login is required)
#   docker run … lora-studio train --config /data/run.toml    # any other command
#
# `serve` on 0.0.0.0 refuses to start without a login: set LORA_STUDIO_AUTH=user:password (environment or the
# compose env file), or LORA_STUDIO_AUTH_FILE to a file of user:password lines (a Docker secret mounted at
# /run/secrets/lora_studio_auth is used by itself).
set -eu

if [ "$#" -eq 0 ]; then
    set -- serve --host 0.0.0.0
fi
if [ "$1" = "serve" ]; then
    auth_file="${LORA_STUDIO_AUTH_FILE:-}"
    if [ -z "$auth_file" ] && [ -f /run/secrets/lora_studio_auth ]; then
        auth_file=/run/secrets/lora_studio_auth
    fi
    if [ -n "$auth_file" ]; then
        set -- "$@" --auth-file "$auth_file"
    fi
fi
exec lora-studio "$@"
