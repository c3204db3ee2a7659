// Command hello is the function bench/coldstart starts: it prints one line
// and exits. Built static (CGO_ENABLED=0).
package main

import "os"

func main() { _, _ = os.Stdout.WriteString("OK hello\n") }
