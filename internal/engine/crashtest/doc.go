// Package crashtest holds the engine's kill -9 tests: the real culvert
// binary, killed at random moments and restarted, against a broker that
// outlives it. It has no code of its own outside its tests.
package crashtest
