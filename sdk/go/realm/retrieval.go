package realm

import (
	"encoding/json"
	"fmt"
	"math"
)

// ABI 1.4: embeddings and the tenant's own vector collections (docs/retrieval.md). A collection id
// of another tenant is ErrNotFound, exactly like one that never existed; the Tenant's spec.vectors
// limits and its rate quotas are ErrQuotaExceeded; a failed store is ErrUnavailable.

// Collection describes one of the tenant's vector collections.
type Collection struct {
	ID             string  `json:"id"`
	Name           string  `json:"name"`
	Dimensions     int     `json:"dimensions"`
	Count          int     `json:"count"`
	EmbeddingModel *string `json:"embedding_model"`
}

// TextItem is one text to add to a collection; it is cut into chunks (ids "<ID>#<n>").
// An empty ID gets a random one. Metadata values are strings, numbers or booleans.
type TextItem struct {
	ID       string         `json:"id,omitempty"`
	Text     string         `json:"text"`
	Metadata map[string]any `json:"metadata,omitempty"`
}

// Hit is one chunk a search found, best first.
type Hit struct {
	ID       string         `json:"id"`
	Score    float64        `json:"score"` // cosine similarity, -1..1
	Text     string         `json:"text"`
	Metadata map[string]any `json:"metadata"`
}

// SearchOptions narrow a search: Filter is a JSON filter in OpenAI's vector-store shape, e.g.
// map[string]any{"type": "eq", "key": "topic", "value": "kv"}; a nil Threshold keeps every score.
type SearchOptions struct {
	Filter    any
	Threshold *float64
}

type wireEmbed struct {
	Model *string  `json:"model"`
	Texts []string `json:"texts"`
}

type wireEmbeddings struct {
	Model        string      `json:"model"`
	Vectors      [][]float32 `json:"vectors"`
	PromptTokens int         `json:"prompt_tokens"`
}

type wireAddTexts struct {
	Collection string     `json:"collection"`
	Items      []TextItem `json:"items"`
}

type wireSearch struct {
	Collection     string   `json:"collection"`
	Query          string   `json:"query"`
	K              int      `json:"k"`
	Filter         any      `json:"filter,omitempty"`
	ScoreThreshold *float64 `json:"score_threshold,omitempty"`
}

func callJSONResult(op string, req any, host func([]byte) int64, out any) error {
	b, err := json.Marshal(req)
	if err != nil {
		return &HostError{Op: op, Code: ErrInvalidArgument, Name: ErrInvalidArgument.String(), Message: err.Error()}
	}
	res, err := takeResult(op, host(b))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(res, out); err != nil {
		return fmt.Errorf("realm: %s: bad result: %w", op, err)
	}
	return nil
}

// Embed returns one unit-length vector per text from the embedding model named model ("" for
// the runtime's first one).
func Embed(model string, texts []string) ([][]float32, error) {
	req := wireEmbed{Texts: texts}
	if model != "" {
		req.Model = &model
	}
	var out wireEmbeddings
	err := callJSONResult("realm_embed", req, func(b []byte) int64 { return hostEmbed(bytesPtr(b), uint32(len(b))) }, &out)
	return out.Vectors, err
}

// Dot is the dot product of two vectors of one length: the cosine similarity of unit vectors.
func Dot(a, b []float32) float64 {
	var s float64
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	if math.IsNaN(s) {
		return 0
	}
	return s
}

// CreateCollection makes an empty collection of the runtime's embedding model's vectors.
func CreateCollection(name string) (Collection, error) {
	var out Collection
	req := map[string]string{"name": name}
	err := callJSONResult("realm_collection_create", req, func(b []byte) int64 { return hostCollectionCreate(bytesPtr(b), uint32(len(b))) }, &out)
	return out, err
}

// ListCollections lists the tenant's collections, oldest first.
func ListCollections() ([]Collection, error) {
	const op = "realm_collection_list"
	res, err := takeResult(op, hostCollectionList())
	if err != nil {
		return nil, err
	}
	var out []Collection
	if err := json.Unmarshal(res, &out); err != nil {
		return nil, fmt.Errorf("realm: %s: bad result: %w", op, err)
	}
	return out, nil
}

// DeleteCollection deletes one of the tenant's collections and everything in it.
func DeleteCollection(id string) error {
	if rc := hostCollectionDelete(strPtr(id), uint32(len(id))); rc != 0 {
		return newHostError("realm_collection_delete", ErrorCode(-rc))
	}
	return nil
}

// AddTexts chunks, embeds and stores texts in a collection; it returns the chunks' ids.
func AddTexts(collection string, items []TextItem) ([]string, error) {
	var ids []string
	req := wireAddTexts{Collection: collection, Items: items}
	err := callJSONResult("realm_collection_add_texts", req, func(b []byte) int64 { return hostCollectionAddTexts(bytesPtr(b), uint32(len(b))) }, &ids)
	return ids, err
}

// Search returns the k (1-100) chunks of a collection nearest query, best first.
func Search(collection, query string, k int, opts *SearchOptions) ([]Hit, error) {
	req := wireSearch{Collection: collection, Query: query, K: k}
	if opts != nil {
		req.Filter, req.ScoreThreshold = opts.Filter, opts.Threshold
	}
	var hits []Hit
	err := callJSONResult("realm_collection_search", req, func(b []byte) int64 { return hostCollectionSearch(bytesPtr(b), uint32(len(b))) }, &hits)
	return hits, err
}
