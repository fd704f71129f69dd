// mailsift web quarantine: small progressive enhancements; every page works without this file.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Ask before destructive actions: <form data-confirm="Delete this message?">
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  // Bulk select: the header's checkbox selects (or clears) every row of the page.
  const all = document.getElementById("select-all");
  if (all) {
    const boxes = () => document.querySelectorAll("form#bulk input[type=checkbox][name=id]");
    all.addEventListener("change", () => { for (const box of boxes()) box.checked = all.checked; });
  }
  // Filters: changing a select submits the filter form at once.
  for (const select of document.querySelectorAll("form.filters select")) {
    select.addEventListener("change", () => select.form.requestSubmit());
  }
});
