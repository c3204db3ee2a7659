#!/bin/sh
# A lines-mode function as a plain shell script (proto/SPEC.md section 12):
# one line in, exactly one line out, at once. An e-mail address keeps the
# first letter of its local part and its domain ("ann@example.com" becomes
# "a***@example.com"); any other line gives an empty line, which lines mode
# reads as "no output" (the record is dropped).
#
# It uses only the shell's builtins (read, case, printf): printf is built in,
# so every line reaches the pipe at once, unbuffered. A script that runs a
# tool per line must make that tool flush too (sed -u, stdbuf -oL), and bind
# it into the function's sandbox (sandbox.binds).
while IFS= read -r line; do
	case $line in
	*@*@* | *[[:space:]]*) printf '\n' ;;
	?*@?*.?*)
		user=${line%%@*}
		printf '%s***@%s\n' "${user%"${user#?}"}" "${line#*@}"
		;;
	*) printf '\n' ;;
	esac
done
