//go:build wasm

package realm

import "unsafe"

// The `realm` import module, core-module ABI 1.1 (docs/abi.md). Pointers are offsets into
// this module's linear memory: Go lowers unsafe.Pointer to i32 and keeps the pointee alive
// for the duration of the call; its garbage collector does not move objects.
// Results of i64 functions are the byte length of a pending result (>= 0) or -ErrorCode.

//go:wasmimport realm realm_host_generate
func hostGenerate(reqPtr unsafe.Pointer, reqLen uint32) int64

//go:wasmimport realm realm_host_generate_stream
func hostGenerateStream(reqPtr unsafe.Pointer, reqLen uint32) int64

//go:wasmimport realm realm_encode_tokens
func hostEncodeTokens(modelPtr unsafe.Pointer, modelLen uint32, textPtr unsafe.Pointer, textLen uint32) int64

//go:wasmimport realm realm_decode_tokens
func hostDecodeTokens(modelPtr unsafe.Pointer, modelLen uint32, tokensPtr unsafe.Pointer, nTokens uint32) int64

//go:wasmimport realm realm_host_load_model_by_name
func hostLoadModelByName(namePtr unsafe.Pointer, nameLen uint32) int64

//go:wasmimport realm realm_get_model_version
func hostGetModelVersion(namePtr unsafe.Pointer, nameLen uint32) int64

//go:wasmimport realm realm_input
func hostInput() int64

//go:wasmimport realm realm_emit
func hostEmit(ptr unsafe.Pointer, n uint32) int32

//go:wasmimport realm realm_log
func hostLog(level int32, ptr unsafe.Pointer, n uint32) int32

//go:wasmimport realm realm_result_read
func hostResultRead(dst unsafe.Pointer, n uint32) int32

// ABI 1.1: conversations.

//go:wasmimport realm realm_conversation_create
func hostConversationCreate(reqPtr unsafe.Pointer, reqLen uint32) int64

//go:wasmimport realm realm_conversation_get
func hostConversationGet(idPtr unsafe.Pointer, idLen uint32) int64

//go:wasmimport realm realm_conversation_put
func hostConversationPut(reqPtr unsafe.Pointer, reqLen uint32) int64

//go:wasmimport realm realm_conversation_delete
func hostConversationDelete(idPtr unsafe.Pointer, idLen uint32) int32

// ABI 1.2: generation with options, and the answer of an exported sampler.

//go:wasmimport realm realm_generate_with
func hostGenerateWith(reqPtr unsafe.Pointer, reqLen uint32) int64

//go:wasmimport realm realm_sampler_decide
func hostSamplerDecide(ptr unsafe.Pointer, n uint32) int32

// ABI 1.3: tools, under the tenant's egress allowlist.

//go:wasmimport realm realm_http_fetch
func hostHTTPFetch(reqPtr unsafe.Pointer, reqLen uint32) int64

//go:wasmimport realm realm_mcp_list_tools
func hostMCPListTools(serverPtr unsafe.Pointer, serverLen uint32) int64

//go:wasmimport realm realm_mcp_call_tool
func hostMCPCallTool(reqPtr unsafe.Pointer, reqLen uint32) int64

// realm_run and realm_abi_version are exported from here so that a tenant's main package
// only has to call Run.

//go:wasmexport realm_abi_version
func abiVersion() int32 { return declaredVersion }

//go:wasmexport realm_run
func run() int32 { return runHandler() }

// realm_sampler_step is exported by every module built with the SDK; without SetSampler it
// fails the step (the host reports sampler_trap). The import it answers through is reached
// only through SetSampler, so a module that never sets a sampler does not import it.
//
//go:wasmexport realm_sampler_step
func samplerStep(inLen int32) int32 { return runSamplerStep(inLen) }

// ABI 1.4: retrieval (embeddings, the tenant's vector collections).

//go:wasmimport realm realm_embed
func hostEmbed(reqPtr unsafe.Pointer, reqLen uint32) int64

//go:wasmimport realm realm_collection_create
func hostCollectionCreate(reqPtr unsafe.Pointer, reqLen uint32) int64

//go:wasmimport realm realm_collection_list
func hostCollectionList() int64

//go:wasmimport realm realm_collection_delete
func hostCollectionDelete(idPtr unsafe.Pointer, idLen uint32) int32

//go:wasmimport realm realm_collection_add_texts
func hostCollectionAddTexts(reqPtr unsafe.Pointer, reqLen uint32) int64

//go:wasmimport realm realm_collection_search
func hostCollectionSearch(reqPtr unsafe.Pointer, reqLen uint32) int64

// ABI 1.5: pipelines (the tenant's declared Pipelines).

//go:wasmimport realm realm_pipeline_run
func hostPipelineRun(reqPtr unsafe.Pointer, reqLen uint32) int64
