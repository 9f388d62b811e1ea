package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/musterkit/muster/agent/internal/wire"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/container/memcontainer"
	"github.com/musterkit/muster/errcode"
)

// tinyServer returns an in-memory server holding "tiny", an image of one
// small file, so that hundreds of containers cost little.
func tinyServer(t testing.TB) *memcontainer.Driver {
	t.Helper()
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "etc", "motd"), []byte("tiny\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var blob bytes.Buffer
	if err := image.WriteArchive(context.Background(), &blob, src, nil, nil); err != nil {
		t.Fatal(err)
	}
	d := memcontainer.New(nil)
	if _, err := d.PutImage(context.Background(), &image.Manifest{Name: "tiny"}, &blob); err != nil {
		t.Fatal(err)
	}
	return d
}

// fullLabels returns driver.MaxLabels labels that fill nearly all of
// driver.MaxLabelBytes, distinct for each seed.
func fullLabels(seed int) map[string]string {
	m := map[string]string{}
	for i := range driver.MaxLabels {
		// 175+10 bytes of key, 63 of value: 15,872 bytes in all.
		key := fmt.Sprintf("%sexample/l%02d-%05d", strings.Repeat(strings.Repeat("p", 55)+".", 3), i, seed)
		m[key] = strings.Repeat("v", 63)
	}
	return m
}

// TestLabelCapsAndListOver8MB: a create with too many or too large labels
// is refused with InvalidArgument naming the cap, and List of more
// containers than fit in one 8 MB reply works.
func TestLabelCapsAndListOver8MB(t *testing.T) {
	d := tinyServer(t)
	c := remote(t, d)
	ctx := context.Background()

	labels := fullLabels(0)
	total := 0
	for k, v := range labels {
		total += len(k) + len(v)
	}
	if total > driver.MaxLabelBytes || total < driver.MaxLabelBytes*9/10 {
		t.Fatalf("test labels hold %d bytes; want just under %d", total, driver.MaxLabelBytes)
	}
	tooMany := map[string]string{}
	for i := range driver.MaxLabels + 1 {
		tooMany[fmt.Sprintf("k%d", i)] = "v"
	}
	// 64 labels of 206+4+63 bytes, each valid, 17,472 bytes in all.
	tooLarge := map[string]string{}
	for i := range driver.MaxLabels {
		tooLarge[fmt.Sprintf("%sio/k%02d", strings.Repeat(strings.Repeat("a", 50)+".", 4), i)] = strings.Repeat("v", 63)
	}
	for _, tt := range []struct {
		name   string
		labels map[string]string
		want   string
	}{
		{"too many", tooMany, "65 labels; the limit is 64"},
		{"too large", tooLarge, "labels hold 17472 bytes of keys and values; the limit is 16384"},
		{"value too long", map[string]string{"k": strings.Repeat("v", 64)}, "is 64 bytes long; the limit is 63"},
		{"key too long", map[string]string{strings.Repeat("k", 64): ""}, "is 64 bytes long; the limit is 63"},
	} {
		_, err := c.Create(ctx, &driver.Spec{Name: "big", Image: "tiny", Labels: tt.labels})
		if errcode.Of(err) != errcode.InvalidArgument || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("create with %s labels: got %.300v, want InvalidArgument saying %q", tt.name, err, tt.want)
		}
	}

	// Enough containers with allowed labels to pass 8 MB in one reply.
	n := wire.MaxJSONBody/total + 20
	for i := range n {
		spec := &driver.Spec{Name: fmt.Sprintf("c%04d", i), Image: "tiny", Labels: fullLabels(i)}
		if i == 0 {
			if _, err := c.Create(ctx, spec); err != nil { // one through the agent
				t.Fatal(err)
			}
			continue
		}
		if _, err := d.Create(ctx, spec); err != nil {
			t.Fatal(err)
		}
	}
	all, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if data, _ := json.Marshal(all); len(data) <= wire.MaxJSONBody {
		t.Fatalf("the list is %d bytes, not over %d", len(data), wire.MaxJSONBody)
	}
	got, err := c.List(ctx)
	if err != nil {
		t.Fatalf("List of %d containers: %v", n, err)
	}
	if len(got) != n {
		t.Fatalf("List returned %d containers, want %d", len(got), n)
	}
	for i, info := range got {
		if want := fmt.Sprintf("c%04d", i); info.Spec.Name != want || len(info.Spec.Labels) != driver.MaxLabels {
			t.Fatalf("item %d: %s with %d labels, want %s with %d", i, info.Spec.Name, len(info.Spec.Labels), want, driver.MaxLabels)
		}
	}
	if !equalLabels(got[n-1].Spec.Labels, fullLabels(n-1)) {
		t.Fatalf("the last container's labels came back changed")
	}
}

func equalLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// rawPost sends body to the agent behind c as a POST to path, with a
// declared length or (chunked) without, and returns the reply's status
// and the error it carries.
func rawPost(t *testing.T, c *Client, path string, body []byte, chunked bool) (int, error) {
	t.Helper()
	var r io.Reader = bytes.NewReader(body)
	if chunked {
		r = io.MultiReader(r) // no length known in advance
	}
	req, err := http.NewRequest(http.MethodPost, "https://"+c.addr+path, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		return resp.StatusCode, nil
	}
	return resp.StatusCode, wire.ResponseError(resp)
}

func TestCreateRefusesTrailingData(t *testing.T) {
	c := remote(t, tinyServer(t))
	for _, body := range []string{
		`{"name":"tg1","image":"tiny"} GARBAGE{{{`,
		`{"name":"tg1","image":"tiny"}{"name":"tg2","image":"tiny"}`,
	} {
		status, err := rawPost(t, c, "/v1/containers", []byte(body), false)
		if status != http.StatusBadRequest || errcode.Of(err) != errcode.InvalidArgument || !strings.Contains(err.Error(), "data after the JSON value") {
			t.Errorf("%s: got %d %v, want 400 InvalidArgument for data after the value", body, status, err)
		}
	}
	if list, err := c.List(context.Background()); err != nil || len(list) != 0 {
		t.Fatalf("after refused creates, List = %d containers, %v; want none", len(list), err)
	}
	if status, err := rawPost(t, c, "/v1/containers", []byte("{\"name\":\"tg1\",\"image\":\"tiny\"}\n"), false); status != http.StatusOK {
		t.Fatalf("a body ending in a newline: %d %v", status, err)
	}
}

func TestOverLimitBodyIs413(t *testing.T) {
	c := remote(t, tinyServer(t))
	body := []byte(`{"name":"big","image":"tiny","labels":{"k":"` + strings.Repeat("v", wire.MaxJSONBody) + `"}}`)
	for _, chunked := range []bool{false, true} {
		status, err := rawPost(t, c, "/v1/containers", body, chunked)
		if status != http.StatusRequestEntityTooLarge || errcode.Of(err) != errcode.InvalidArgument ||
			!strings.Contains(err.Error(), "over the limit of 8388608 bytes (8 MiB)") {
			t.Errorf("chunked %v: got %d %v, want 413 InvalidArgument naming the limit", chunked, status, err)
		}
	}
	// Through the Client, the same error.
	_, err := c.Create(context.Background(), &driver.Spec{Name: "big", Image: "tiny", Labels: map[string]string{"k": strings.Repeat("v", wire.MaxJSONBody)}})
	if errcode.Of(err) != errcode.InvalidArgument || !strings.Contains(err.Error(), "over the limit") {
		t.Errorf("Create with an 8 MiB label: got %v, want InvalidArgument naming the limit", err)
	}
	if _, err := c.Get(context.Background(), "big"); errcode.Of(err) != errcode.NotFound {
		t.Fatalf("Get big after refused creates: %v, want NotFound", err)
	}
}
