#!/bin/sh
# A cluster needs one Erlang cookie on every node: RABBITMQ_ERLANG_COOKIE_FILE names a
# file (a compose secret) copied to $HOME/.erlang.cookie, mode 0400 as Erlang demands.
set -eu
if [ -n "${RABBITMQ_ERLANG_COOKIE_FILE:-}" ]; then
    install -m 400 "$RABBITMQ_ERLANG_COOKIE_FILE" "$HOME/.erlang.cookie"
fi
exec rabbitmq-server "$@"
