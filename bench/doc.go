// Package bench holds benchmark harnesses that measure Muster against a
// peer in the same run and report the ratio. They need root
// (MUSTER_ROOT_TESTS=1); see BENCHMARKS.md for the commands and results.
package bench
