#!/usr/bin/env bash
exec bash "$(dirname "$0")/gpu/check.sh" "$@"  # kept at this path: external instructions name it
