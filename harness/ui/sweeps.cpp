// /api/sweeps and /api/sweeps/ID: each sweep's progress as `ssr sweep status` counts it
// (sweep::job_status), its ETA, and its jobs with their runs and error lines.
#include "harness/sweep/launch.hpp"
#include "harness/ui/endpoints.hpp"

namespace ssr::ui {
namespace {

const double kStaleAfter = 120;  // as `ssr sweep status`

json summary_json(const sweep::Summary& s) {
  return {{"total", s.total},   {"done", s.done},   {"failed", s.failed},   {"running", s.running},
          {"queued", s.queued}, {"stale", s.stale}, {"missing", s.missing}, {"interrupted", s.interrupted},
          {"line", s.line()}};
}

// Seconds left: the mean duration of this sweep's ended runs, times the jobs left, over the jobs
// running now (at least one). Null until a job has ended.
json eta(const store::Store& s, const std::vector<sweep::JobStatus>& jobs, const sweep::Summary& sum) {
  double took = 0;
  int64_t ended = 0;
  for (const auto& j : jobs) {
    if ((j.status != "finished" && j.status != "nan") || j.run_id == 0) continue;
    const auto r = s.run(j.run_id);
    if (!r || r->ended_at <= r->started_at || r->started_at <= 0) continue;
    took += r->ended_at - r->started_at;
    ++ended;
  }
  const int64_t left = sum.queued + sum.running + sum.stale + sum.interrupted;
  if (ended == 0 || left == 0) return nullptr;
  return took / static_cast<double>(ended) * static_cast<double>(left) /
         static_cast<double>(std::max<int64_t>(1, sum.running));
}

json sweep_head(const store::Sweep& sw) {
  return {{"id", sw.id},
          {"name", sw.name},
          {"file", sw.spec.value("file", "")},
          {"scale", sw.spec.value("scale", "")},
          {"overrides", sw.spec.value("cli_overrides", json::array())},
          {"created_at", sw.created_at}};
}

}  // namespace

json sweeps_page(const store::Store& s) {
  json out = json::array();
  for (const auto& sw : s.sweeps()) {
    const auto jobs = sweep::job_status(s, sw, kStaleAfter);
    const auto sum = sweep::summarize(jobs);
    json row = sweep_head(sw);
    row["summary"] = summary_json(sum);
    row["eta_s"] = eta(s, jobs, sum);
    out.push_back(row);
  }
  return {{"sweeps", out}, {"store", s.path()}};
}

json sweep_page(const store::Store& s, int64_t id) {
  const auto sw = s.sweep(id);
  if (!sw) throw Refused{404, fmt::format("no sweep {} in {}", id, s.path())};
  const auto jobs = sweep::job_status(s, *sw, kStaleAfter);
  const auto sum = sweep::summarize(jobs);
  json out = sweep_head(*sw);
  out["summary"] = summary_json(sum);
  out["eta_s"] = eta(s, jobs, sum);
  out["jobs"] = json::array();
  for (const auto& j : jobs) {
    json row = {{"num", j.num}, {"labels", j.labels}, {"status", j.status}};
    if (j.run_id) {
      row["run"] = j.run_id;
      if (const auto r = s.run(j.run_id)) {
        row["error"] = r->error.substr(0, r->error.find('\n'));
        if (r->started_at > 0) row["seconds"] = (r->ended_at > 0 ? r->ended_at : store::now()) - r->started_at;
        row["step"] = r->step;
      }
    }
    out["jobs"].push_back(row);
  }
  return out;
}

}  // namespace ssr::ui
