// The one page `ssr ui` serves: HTML and its script, which draws everything from the JSON API.
#pragma once
#include <string>

namespace ssr::ui {

const std::string& page_html();

}  // namespace ssr::ui
