package driver

import (
	"fmt"
	"strings"
	"testing"

	"github.com/musterkit/muster/errcode"
)

func TestValidLabelsShapes(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	prefix253 := strings.Repeat(long(63)+".", 3) + long(61) // 4 DNS labels, 253 bytes
	for _, k := range []string{
		"app", "A", "a.b_c-d", "muster.io/service", "muster.io/check-path", "muster.dev/owner",
		long(63), prefix253 + "/" + long(63), "x-1.example/Name_1",
	} {
		if err := ValidLabels(map[string]string{k: "v"}); err != nil {
			t.Errorf("key %.40q refused: %v", k, err)
		}
	}
	for _, v := range []string{"", "v", "Front-end_1.2", long(63)} {
		if err := ValidLabels(map[string]string{"k": v}); err != nil {
			t.Errorf("value %.40q refused: %v", v, err)
		}
	}
	for _, tt := range []struct{ k, v, want string }{
		{"", "v", "name: is empty"},
		{long(64), "v", "name: is 64 bytes long; the limit is 63"},
		{"-a", "v", "start and end"},
		{"a_", "v", "start and end"},
		{"a b", "v", `contains ' '`},
		{"é", "v", `contains 'é'`},
		{"a/b/c", "v", `contains '/'`},
		{"/a", "v", "prefix is not a DNS subdomain"},
		{"Muster.io/a", "v", "prefix is not a DNS subdomain"},
		{"a..b/a", "v", "prefix is not a DNS subdomain"},
		{"a_b/a", "v", "prefix is not a DNS subdomain"},
		{"-a.b/a", "v", "prefix is not a DNS subdomain"},
		{"a/", "v", "name: is empty"},
		{prefix253 + "a/a", "v", "prefix is 254 bytes long; the limit is 253"},
		{"k", long(64), "value \"aaaa"},
		{"k", "v\n", `contains '\n'`},
		{"k", ".v", "start and end"},
	} {
		err := ValidLabels(map[string]string{tt.k: tt.v})
		if errcode.Of(err) != errcode.InvalidArgument || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("label %.40q=%.40q: got %v, want InvalidArgument saying %q", tt.k, tt.v, err, tt.want)
		}
	}
}

func TestValidLabelsCaps(t *testing.T) {
	many := func(n, valueLen int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[fmt.Sprintf("example.com/label-%04d", i)] = strings.Repeat("v", valueLen)
		}
		return m
	}
	// 64 labels of 22+63 bytes: 5,440 bytes, within both caps.
	if err := ValidLabels(many(MaxLabels, 63)); err != nil {
		t.Fatalf("%d labels refused: %v", MaxLabels, err)
	}
	err := ValidLabels(many(MaxLabels+1, 1))
	if errcode.Of(err) != errcode.InvalidArgument || !strings.Contains(err.Error(), "65 labels; the limit is 64") {
		t.Fatalf("65 labels: got %v, want InvalidArgument naming the count and its limit", err)
	}
	// 64 labels with 253-byte prefixes: 64*(253+1+10+63) = 20,928 bytes.
	big := map[string]string{}
	prefix := strings.Repeat(strings.Repeat("p", 63)+".", 3) + strings.Repeat("p", 61)
	for i := range MaxLabels {
		big[fmt.Sprintf("%s/label-%04d", prefix, i)] = strings.Repeat("v", 63)
	}
	err = ValidLabels(big)
	if errcode.Of(err) != errcode.InvalidArgument || !strings.Contains(err.Error(), "labels hold 20928 bytes of keys and values; the limit is 16384") {
		t.Fatalf("20,928 bytes of labels: got %v, want InvalidArgument naming the size and its limit", err)
	}
}
