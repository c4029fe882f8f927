// tinylora serve over loopback: every endpoint, streaming and not; the refusals with their
// statuses; batch invariance across base, LoRA and tree requests in one batch; adapter hot
// load and unload under a running stream; a client gone mid-stream; SIGTERM drain.
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "server/chat_template.h"
#include "server/engine.h"
#include "server/http_server.h"
#include "test_util.h"
#include "util/file.h"

namespace tinylora {
namespace {

using nlohmann::json;

// One tiny model and its adapters for the whole file (made once: a tokenizer is trained).
struct Fixture {
  test::TempDir dir;
  std::string model,
      adapters;  // the base directory; --adapter-dir with lora_a, lora_b, tree, spare
  Fixture() {
    const std::string tok = test::TrainTinyTokenizer(dir.path(), 300);
    model = dir / "base";
    const test::CliResult r = test::RunCli(
        {"init", "--preset", "tiny", "--out", model, "--tokenizer", tok, "--seed", "7"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    adapters = dir / "adapters";
    const LlamaConfig c = ModelWeights::Load(model)->config;
    const std::pair<const char*, int> made[] = {
        {"lora_a", 0}, {"lora_b", 0}, {"tree", 2}, {"spare", 0}};
    uint32_t seed = 1;
    for (const auto& [name, depth] : made) {
      AdapterConfig ac;
      ac.r = 4;
      ac.alpha = 8;
      ac.tree_depth = depth;
      ac.targets = ParseTargets("all-linear", "test");
      auto a = Adapter::Create(c, ac, seed, /*with_grads=*/false);
      std::mt19937 rng(seed++);
      std::normal_distribution<float> nd(0.0f, 0.5f);
      for (int i = 0; i < a->params().size(); ++i)  // B and routers non-zero
        if (a->params().name(i).find("lora_A") == std::string::npos)
          for (int64_t k = 0; k < a->params().numel(i); ++k) a->params().value(i)[k] = nd(rng);
      a->Save(JoinPath(adapters, name));
    }
  }
};
const Fixture& F() {
  static Fixture f;
  return f;
}

// An engine and its HTTP server on a free loopback port, serving until destroyed.
struct TestServer {
  std::unique_ptr<Engine> engine;
  std::unique_ptr<HttpServer> http;
  std::thread thread;
  int port = 0;
  explicit TestServer(EngineOptions eo = {}, HttpOptions ho = {},
                      // Not in name order: slots are given in this order, installed in name order.
                      std::vector<std::string> preload = {"tree", "lora_b", "lora_a"}) {
    engine = std::make_unique<Engine>(ModelWeights::Load(F().model), "base", eo);
    for (const std::string& name : preload)
      engine->AddAdapter(name,
                         Adapter::Load(JoinPath(F().adapters, name), engine->config(), false));
    ho.port = 0;
    if (!ho.chat) ho.chat = ChatStyle::kZephyr;
    http = std::make_unique<HttpServer>(*engine, ho);
    port = http->Bind();
    thread = std::thread([this] { http->Listen(); });
  }
  ~TestServer() {
    http->Shutdown();
    thread.join();
  }
  httplib::Client Client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60);
    return c;
  }
};

httplib::Result Post(const TestServer& s, const std::string& path, const json& body,
                     const httplib::Headers& headers = {}) {
  return s.Client().Post(path.c_str(), headers, body.dump(), "application/json");
}

// A streamed answer: the events' JSON, in order, and whether it ended with [DONE].
struct Streamed {
  std::vector<json> events;
  bool done = false;
  std::string Text(bool chat) const {
    std::string t;
    for (const json& e : events) {
      const json& c = e["choices"][0];
      if (chat) {
        if (c["delta"].contains("content")) t += c["delta"]["content"].get<std::string>();
      } else {
        t += c["text"].get<std::string>();
      }
    }
    return t;
  }
};

// Posts with stream: true; `on_event` may return false to hang up.
Streamed Stream(const TestServer& s, const std::string& path, json body,
                const std::function<bool(const json&)>& on_event = nullptr) {
  body["stream"] = true;
  Streamed out;
  std::string buf;
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    buf.append(data, n);
    for (size_t end; (end = buf.find("\n\n")) != std::string::npos; buf.erase(0, end + 2)) {
      const std::string ev = buf.substr(0, end);
      EXPECT_EQ(ev.rfind("data: ", 0), 0u) << ev;
      if (ev == "data: [DONE]") {
        out.done = true;
        continue;
      }
      out.events.push_back(json::parse(ev.substr(6)));
      if (on_event && !on_event(out.events.back())) return false;
    }
    return true;
  };
  s.Client().send(req);
  return out;
}

json Completion(const TestServer& s, const std::string& model, const std::string& prompt,
                int max_tokens) {
  auto r =
      Post(s, "/v1/completions",
           {{"model", model}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}});
  EXPECT_TRUE(r);
  if (!r) return {};
  EXPECT_EQ(r->status, 200) << r->body;
  return json::parse(r->body);
}

double MetricValue(const std::string& text, const std::string& line_start) {
  const size_t at = text.find("\n" + line_start + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + line_start.size() + 2));
}

const char* kPrompts[] = {"the quick brown fox", "lazy dog over",   "adapter tree leaf router",
                          "small fast model",    "café naïve über", "token jumps"};

TEST(Server, EndpointsAnswerStreamingAndNot) {
  TestServer s;
  auto health = s.Client().Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  auto models = s.Client().Get("/v1/models");
  ASSERT_TRUE(models);
  std::vector<std::string> ids;
  const json list = json::parse(models->body);
  for (const json& m : list["data"]) ids.push_back(m["id"]);
  EXPECT_EQ(ids, (std::vector<std::string>{"base", "lora_a", "lora_b", "tree"}));

  const json whole = Completion(s, "tree", kPrompts[0], 12);
  EXPECT_EQ(whole["object"], "text_completion");
  EXPECT_EQ(whole["model"], "tree");
  const json& usage = whole["usage"];
  EXPECT_GT(usage["prompt_tokens"].get<int>(), 1);
  const int completion = usage["completion_tokens"];
  EXPECT_EQ(usage["total_tokens"].get<int>(), usage["prompt_tokens"].get<int>() + completion);
  EXPECT_EQ(whole["choices"][0]["finish_reason"], completion == 12 ? "length" : "stop");

  const Streamed streamed =
      Stream(s, "/v1/completions",
             {{"model", "tree"}, {"prompt", kPrompts[0]}, {"max_tokens", 12}, {"temperature", 0}});
  EXPECT_TRUE(streamed.done);
  ASSERT_GE(streamed.events.size(), 1u);
  EXPECT_EQ(streamed.Text(false), whole["choices"][0]["text"].get<std::string>());
  EXPECT_EQ(streamed.events.back()["usage"], usage);
  EXPECT_EQ(streamed.events.back()["choices"][0]["finish_reason"],
            whole["choices"][0]["finish_reason"]);

  const json chat_body = {
      {"model", "lora_a"},
      {"messages",
       {{{"role", "system"}, {"content", "be brief"}}, {{"role", "user"}, {"content", "the fox"}}}},
      {"max_tokens", 10},
      {"temperature", 0}};
  auto chat = Post(s, "/v1/chat/completions", chat_body);
  ASSERT_TRUE(chat);
  ASSERT_EQ(chat->status, 200) << chat->body;
  const json cj = json::parse(chat->body);
  EXPECT_EQ(cj["object"], "chat.completion");
  EXPECT_EQ(cj["choices"][0]["message"]["role"], "assistant");
  // The rendered Zephyr prompt: BOS <|system|>\n… EOS \n <|user|>\n… EOS \n <|assistant|>\n.
  const Tokenizer& tok = *s.engine->tokenizer();
  const std::vector<int> ids_expected =
      RenderChat(ChatStyle::kZephyr, {{"system", "be brief"}, {"user", "the fox"}}, tok);
  EXPECT_EQ(cj["usage"]["prompt_tokens"].get<size_t>(), ids_expected.size());
  const Streamed chat_stream = Stream(s, "/v1/chat/completions", chat_body);
  EXPECT_TRUE(chat_stream.done);
  EXPECT_EQ(chat_stream.events.front()["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(chat_stream.events.front()["object"], "chat.completion.chunk");
  EXPECT_EQ(chat_stream.Text(true), cj["choices"][0]["message"]["content"].get<std::string>());
  EXPECT_EQ(chat_stream.events.back()["usage"], cj["usage"]);

  // A stop string cuts the text before it, with finish_reason "stop".
  const std::string full = Completion(s, "lora_b", kPrompts[2], 24)["choices"][0]["text"];
  ASSERT_GE(full.size(), 4u);
  const std::string stop = full.substr(full.size() / 2, 1);
  auto cut = Post(s, "/v1/completions",
                  {{"model", "lora_b"},
                   {"prompt", kPrompts[2]},
                   {"max_tokens", 24},
                   {"temperature", 0},
                   {"stop", stop}});
  ASSERT_TRUE(cut);
  const json cutj = json::parse(cut->body);
  EXPECT_EQ(cutj["choices"][0]["text"], full.substr(0, full.find(stop)));
  EXPECT_EQ(cutj["choices"][0]["finish_reason"], "stop");

  // The gauges are set between steps: the last answer may reach us just before they are.
  auto metrics = s.Client().Get("/metrics");
  for (int i = 0;
       i < 200 && metrics && MetricValue(metrics->body, "tinylora_running_sequences") != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    metrics = s.Client().Get("/metrics");
  }
  ASSERT_TRUE(metrics);
  EXPECT_EQ(MetricValue(metrics->body, "tinylora_requests_total{model=\"tree\"}"), 2);
  EXPECT_EQ(MetricValue(metrics->body, "tinylora_requests_total{model=\"lora_a\"}"), 2);
  EXPECT_EQ(MetricValue(metrics->body, "tinylora_generated_tokens_total{model=\"tree\"}"),
            2 * completion);
  EXPECT_GE(MetricValue(metrics->body, "tinylora_time_to_first_token_seconds_count"), 6);
  EXPECT_EQ(MetricValue(metrics->body, "tinylora_running_sequences"), 0);
}

TEST(Server, RefusesBadRequestsWithTheirStatus) {
  EngineOptions eo;
  eo.ctx = 64;
  eo.kv_budget = 40;
  HttpOptions ho;
  ho.max_body_bytes = 4096;
  TestServer s(eo, ho);
  auto expect = [&](const std::string& body, int status, const std::string& param,
                    const std::string& path = "/v1/completions") {
    auto r = s.Client().Post(path.c_str(), body, "application/json");
    ASSERT_TRUE(r) << body;
    EXPECT_EQ(r->status, status) << body << " -> " << r->body;
    const json e = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(e.is_object() && e.contains("error")) << r->body;
    EXPECT_TRUE(e["error"]["message"].is_string());
    EXPECT_EQ(e["error"]["param"], param.empty() ? json(nullptr) : json(param)) << r->body;
  };
  expect("{\"prompt\": \"x\",", 400, "");
  expect("[1, 2]", 400, "");
  expect(R"({"prompt": "x", "max_tokens": "8"})", 400, "max_tokens");
  expect(R"({"prompt": "x", "max_tokens": 0})", 400, "max_tokens");
  expect(R"({"prompt": "x", "temperature": 3})", 400, "temperature");
  expect(R"({"prompt": "x", "top_p": -1})", 400, "top_p");
  expect(R"({"prompt": "x", "stream": "yes"})", 400, "stream");
  expect(R"({"prompt": "x", "n": 2})", 400, "n");
  expect(R"({"prompt": "x", "stop": [1]})", 400, "stop");
  expect(R"({"prompt": 5})", 400, "prompt");
  expect(R"({"prompt": [1, 999999]})", 400, "prompt");
  expect(R"({"max_tokens": 4})", 400, "prompt");
  expect(R"({"prompt": "x", "model": "nope"})", 400, "model");
  expect(R"({"messages": [{"role": "robot", "content": "x"}]})", 400, "messages",
         "/v1/chat/completions");
  expect(R"({"messages": "hi"})", 400, "messages", "/v1/chat/completions");
  std::string long_prompt = "[1";
  for (int i = 0; i < 70; ++i) long_prompt += ", 5";
  expect(R"({"prompt": )" + long_prompt + "]}", 400, "prompt");  // over --ctx 64
  // 30 + 20 positions can never fit the budget of 40.
  std::string thirty = "[1";
  for (int i = 0; i < 29; ++i) thirty += ", 5";
  expect(R"({"prompt": )" + thirty + R"(], "max_tokens": 20})", 400, "max_tokens");
  expect(R"({"prompt": ")" + std::string(5000, 'a') + "\"}", 413, "");
  // Fields tinylora has no use for are ignored, as OpenAI's clients send them.
  auto extra =
      s.Client().Post("/v1/completions",
                      R"({"prompt": "x", "max_tokens": 2, "user": "u", "logprobs": null, "x": {}})",
                      "application/json");
  ASSERT_TRUE(extra);
  EXPECT_EQ(extra->status, 200) << extra->body;
}

TEST(Server, ApiKeyAndChatTemplate) {
  HttpOptions ho;
  ho.api_key = "sekrit";
  TestServer s({}, ho);
  const json body = {{"prompt", "the"}, {"max_tokens", 2}};
  auto none = Post(s, "/v1/completions", body);
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 401);
  auto wrong = Post(s, "/v1/completions", body, {{"Authorization", "Bearer nope"}});
  EXPECT_EQ(wrong->status, 401);
  EXPECT_EQ(s.Client().Get("/v1/models")->status, 401);
  EXPECT_EQ(s.Client().Get("/health")->status, 200);
  auto right = Post(s, "/v1/completions", body, {{"Authorization", "Bearer sekrit"}});
  EXPECT_EQ(right->status, 200) << right->body;
  EXPECT_EQ(s.Client().Get("/nowhere", {{"Authorization", "Bearer sekrit"}})->status, 404);

  // The templates are recognised by their text; an unknown one is an error at start-up.
  const std::string zephyr =
      "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + "
      "message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ "
      "'<|assistant|>\n' + message['content'] + eos_token }}\n{% endif %}\n{% endfor %}";
  EXPECT_EQ(RecogniseChatTemplate(zephyr), ChatStyle::kZephyr);
  EXPECT_EQ(RecogniseChatTemplate("{{'<|im_start|>' + message['role']}}"), ChatStyle::kChatMl);
  EXPECT_EQ(RecogniseChatTemplate("{{ bos_token + '[INST] ' + content + ' [/INST]' }}"),
            ChatStyle::kLlama2);
  EXPECT_NE(test::ErrorOf([] { RecogniseChatTemplate("{{ messages }}"); }).find("--chat-template"),
            std::string::npos);
  const Tokenizer& tok = *s.engine->tokenizer();
  std::vector<int> expected = {tok.bos_id()};
  for (const std::string& run : {std::string("[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST] A ")}) {
    const auto ids = tok.Encode(run, false);
    expected.insert(expected.end(), ids.begin(), ids.end());
  }
  expected.push_back(tok.eos_id());
  expected.push_back(tok.bos_id());
  for (int id : tok.Encode("[INST] V [/INST]", false)) expected.push_back(id);
  EXPECT_EQ(RenderChat(ChatStyle::kLlama2,
                       {{"system", "S"}, {"user", "U"}, {"assistant", "A"}, {"user", "V"}}, tok),
            expected);

  test::TempDir d;
  const std::string model = d / "m";
  ASSERT_EQ(std::system(("cp -r " + F().model + " " + model).c_str()), 0);
  test::WriteFile(model + "/tokenizer_config.json", R"({"chat_template": "{{ messages }}"})");
  const test::CliResult r = test::RunCli({"serve", "--model", model, "--port", "0"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("error: the model's chat template is not one tinylora recognises"),
            std::string::npos)
      << r.err;
}

TEST(Server, AModelWithoutATokenizerTakesAndGivesIds) {
  Engine engine(ModelWeights::Load(test::FixturePath("forward/gqa")), "gqa", {});
  ASSERT_EQ(engine.tokenizer(), nullptr);
  HttpOptions ho;
  ho.port = 0;
  HttpServer http(engine, ho);
  const int port = http.Bind();
  std::thread t([&] { http.Listen(); });
  httplib::Client c("127.0.0.1", port);
  auto ids =
      c.Post("/v1/completions", R"({"prompt": [1, 5, 9], "max_tokens": 5, "temperature": 0})",
             "application/json");
  auto text = c.Post("/v1/completions", R"({"prompt": "hello"})", "application/json");
  auto chat = c.Post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}]})",
                     "application/json");
  http.Shutdown();
  t.join();
  ASSERT_TRUE(ids && text && chat);
  ASSERT_EQ(ids->status, 200) << ids->body;
  const json j = json::parse(ids->body);
  const std::string out = j["choices"][0]["text"];
  const int n = j["usage"]["completion_tokens"];
  std::istringstream in(out);
  int count = 0;
  for (int id; in >> id; ++count) EXPECT_LT(id, engine.config().vocab);
  EXPECT_EQ(count, n);
  EXPECT_EQ(text->status, 400);
  EXPECT_NE(text->body.find("no tokenizer"), std::string::npos);
  EXPECT_EQ(chat->status, 400);
}

TEST(Server, QueueFullIs429AndBatchInvariance) {
  std::map<std::string, std::string> alone;  // model -> greedy text, each request by itself
  const std::string models[] = {"base", "lora_a", "tree", "lora_b", "base", "tree"};
  {
    TestServer s;
    for (int i = 0; i < 6; ++i)
      alone[models[i] + kPrompts[i]] =
          Completion(s, models[i], kPrompts[i], 40)["choices"][0]["text"];
    // Adapters change the answer: the test would see a request run on the wrong one.
    EXPECT_NE(alone["base" + std::string(kPrompts[0])],
              Completion(s, "lora_a", kPrompts[0], 40)["choices"][0]["text"]);
    EXPECT_NE(alone["tree" + std::string(kPrompts[2])],
              Completion(s, "lora_a", kPrompts[2], 40)["choices"][0]["text"]);
  }
  // The same six at once, with short chunks so prompts are read in pieces between decodes.
  EngineOptions eo;
  eo.max_batch_tokens = 8;
  TestServer s(eo);
  for (int round = 0; round < 2; ++round) {
    std::vector<std::thread> clients;
    std::vector<std::string> together(6);
    for (int i = 0; i < 6; ++i) {
      clients.emplace_back([&, i] {
        together[static_cast<size_t>(i)] =
            Completion(s, models[i], kPrompts[i], 40)["choices"][0]["text"];
      });
    }
    for (auto& t : clients) t.join();
    for (int i = 0; i < 6; ++i)
      EXPECT_EQ(together[static_cast<size_t>(i)], alone[models[i] + kPrompts[i]]) << models[i];
  }
  const std::string m = s.Client().Get("/metrics")->body;
  // Some forwards held more than two sequences (the buckets are cumulative).
  EXPECT_LT(MetricValue(m, "tinylora_batch_sequences_bucket{le=\"2\"}"),
            MetricValue(m, "tinylora_batch_sequences_count"));

  // And the same as `tinylora generate --greedy` with that adapter.
  const test::CliResult g =
      test::RunCli({"generate", "--model", F().model, "--adapter", JoinPath(F().adapters, "tree"),
                    "--prompt", kPrompts[2], "--greedy", "--max-new-tokens", "40"});
  ASSERT_EQ(g.exit_code, 0) << g.err;
  EXPECT_EQ(g.out, alone["tree" + std::string(kPrompts[2])] + "\n");

  // One sequence, one waiting: a third request is refused with Retry-After.
  EngineOptions one;
  one.max_sequences = 1;
  one.max_queue = 1;
  TestServer q(one);
  std::atomic<int> events{0};
  std::thread running([&] {
    Stream(q, "/v1/completions", {{"prompt", "the"}, {"max_tokens", 400}, {"temperature", 0}},
           [&](const json&) { return ++events < 1000; });
  });
  while (events.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  std::thread waiting([&] { Completion(q, "base", "the", 4); });
  for (int i = 0;
       i < 500 && MetricValue(q.Client().Get("/metrics")->body, "tinylora_queue_length") < 1; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  auto full = Post(q, "/v1/completions", {{"prompt", "the"}, {"max_tokens", 4}});
  ASSERT_TRUE(full);
  EXPECT_EQ(full->status, 429) << full->body;
  EXPECT_EQ(full->get_header_value("Retry-After"), "1");
  running.join();
  waiting.join();
}

TEST(Server, HotLoadAndUnloadDuringAStream) {
  HttpOptions ho;
  ho.adapter_dir = F().adapters;
  TestServer s({}, ho);
  std::atomic<int> events{0};
  Streamed long_stream;
  std::thread streaming([&] {
    long_stream =
        Stream(s, "/v1/completions",
               {{"model", "lora_a"}, {"prompt", "the"}, {"max_tokens", 300}, {"temperature", 0}},
               [&](const json&) {
                 ++events;
                 return true;
               });
  });
  while (events.load() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  auto load = Post(s, "/v1/adapters", {{"name", "spare"}});
  ASSERT_TRUE(load);
  EXPECT_EQ(load->status, 200) << load->body;
  EXPECT_EQ(Completion(s, "spare", "the fox", 4)["model"], "spare");
  EXPECT_EQ(Post(s, "/v1/adapters", {{"name", "spare"}})->status, 400);    // already loaded
  EXPECT_EQ(Post(s, "/v1/adapters", {{"name", "../base"}})->status, 400);  // not a name
  EXPECT_EQ(Post(s, "/v1/adapters", {{"name", "missing"}})->status, 404);
  auto del = s.Client().Delete("/v1/adapters/lora_a");
  ASSERT_TRUE(del);
  EXPECT_EQ(del->status, 200) << del->body;
  EXPECT_EQ(s.Client().Delete("/v1/adapters/lora_a")->status, 404);
  auto refused = Post(s, "/v1/completions", {{"model", "lora_a"}, {"prompt", "x"}});
  EXPECT_EQ(refused->status, 400) << refused->body;
  const int during = events.load();
  streaming.join();
  EXPECT_GT(events.load(), during);  // the stream kept going after the delete
  EXPECT_TRUE(long_stream.done);
  const json& last = long_stream.events.back();
  if (last["choices"][0]["finish_reason"] == "length") {
    EXPECT_EQ(last["usage"]["completion_tokens"], 300);
  }
  std::string ids;
  for (int i = 0; i < 200; ++i) {  // freed once its stream ended
    ids = s.Client().Get("/v1/models")->body;
    if (ids.find("lora_a") == std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(ids.find("lora_a"), std::string::npos) << ids;
  EXPECT_NE(ids.find("spare"), std::string::npos) << ids;
  // Loaded again under the same name, it answers as before.
  EXPECT_EQ(Post(s, "/v1/adapters", {{"name", "lora_a"}})->status, 200);
  EXPECT_EQ(Completion(s, "lora_a", "the", 300)["choices"][0]["text"], long_stream.Text(false));
}

TEST(Server, ADisconnectedClientFreesItsSequence) {
  TestServer s;
  int seen = 0;
  Stream(s, "/v1/completions", {{"prompt", "the"}, {"max_tokens", 400}, {"temperature", 0}},
         [&](const json&) { return ++seen < 3; });
  double running = -1, generated = -1;
  for (int i = 0; i < 500; ++i) {
    const std::string m = s.Client().Get("/metrics")->body;
    running = MetricValue(m, "tinylora_running_sequences");
    generated = MetricValue(m, "tinylora_generated_tokens_total{model=\"base\"}");
    if (running == 0 && generated >= 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(running, 0);
  EXPECT_GE(generated, 3);
  EXPECT_LT(generated, 400);  // cancelled, not run to max_tokens
}

TEST(Server, SigtermFinishesRunningRequestsThenExitsZero) {
  int port = 0;
  {  // a free port (a plain socket: closed here, so no listener of ours is left on it)
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
    port = ntohs(a.sin_port);
    close(fd);
  }
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string p = std::to_string(port);
    execl(TINYLORA_BINARY, TINYLORA_BINARY, "serve", "--model", F().model.c_str(), "--port",
          p.c_str(), "--max-sequences", "1", static_cast<char*>(nullptr));
    _exit(127);
  }
  httplib::Client c("127.0.0.1", port);
  bool up = false;
  for (int i = 0; i < 1000 && !up; ++i) {
    auto h = c.Get("/health");
    up = h && h->status == 200;
    if (!up) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(up);
  std::atomic<int> events{0};
  std::string body;
  std::thread streaming([&] {
    httplib::Client sc("127.0.0.1", port);
    sc.set_read_timeout(60);
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body =
        json{{"prompt", "the"}, {"max_tokens", 500}, {"temperature", 0}, {"stream", true}}.dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
      body.append(d, n);
      ++events;
      return true;
    };
    sc.send(req);
  });
  while (events.load() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  // A second request waits in the queue (one sequence at a time) when SIGTERM comes.
  int queued_status = 0;
  std::thread queued([&] {
    httplib::Client qc("127.0.0.1", port);
    qc.set_read_timeout(60);
    auto r =
        qc.Post("/v1/completions", R"({"prompt": "fox", "max_tokens": 8})", "application/json");
    queued_status = r ? r->status : -1;
  });
  for (int i = 0; i < 200; ++i) {
    auto m = c.Get("/metrics");
    if (m && m->body.find("\ntinylora_queue_length 1") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const int at_kill = events.load();
  kill(pid, SIGTERM);
  streaming.join();
  queued.join();
  EXPECT_GT(events.load(), at_kill);  // the stream went on after SIGTERM
  EXPECT_EQ(queued_status, 200);
  EXPECT_NE(body.find("\"completion_tokens\":500"), std::string::npos);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_NE(body.find("data: [DONE]"), std::string::npos);
  EXPECT_NE(body.find("\"completion_tokens\":"), std::string::npos);
}

}  // namespace
}  // namespace tinylora
