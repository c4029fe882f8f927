// A request the server refuses: its HTTP status and the OpenAI-style error object's fields.
#pragma once

#include <stdexcept>
#include <string>

namespace tinylora {

struct ApiError : std::runtime_error {
  ApiError(int http_status, const std::string& message, std::string bad_param = "",
           int retry_after_s = 0)
      : std::runtime_error(message),
        status(http_status),
        param(std::move(bad_param)),
        retry_after(retry_after_s) {}
  int status;
  std::string param;    // the request field at fault, or ""
  int retry_after = 0;  // seconds for a Retry-After header (429, 503), or 0
};

}  // namespace tinylora
