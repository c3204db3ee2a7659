# Shell-function examples (examples/shell) and the shell scaffold of
# `culvert fn init`: jq and mawk in lines mode, dash for exec-mode scripts.
apt_install jq mawk dash
