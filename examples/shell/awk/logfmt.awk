# Turns log lines "LEVEL message..." into JSON objects
# {"level":"level","msg":"message..."}, one line out per line in. DEBUG
# lines and blank lines give an empty line: no output in lines mode.
# Run with mawk -W interactive (Debian's awk), which writes every line at
# once, or gawk, which flushes output when it reads from a pipe.

function json(s) {
	gsub(/\\/, "&&", s) # "&" is the match: one backslash becomes two
	gsub(/"/, "\\\"", s)
	gsub(/\t/, "\\t", s)
	gsub(/\r/, "\\r", s)
	return "\"" s "\""
}

$1 == "" || $1 == "DEBUG" { print ""; next }

{
	msg = $0
	sub(/^[ \t]*[^ \t]+[ \t]*/, "", msg)
	printf "{\"level\":%s,\"msg\":%s}\n", json(tolower($1)), json(msg)
}
