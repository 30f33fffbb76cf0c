variable "name" {
  description = "Alias of the Prometheus workspace."
  type        = string
}

variable "aws_region" {
  description = "Region of the workspace and of the SNS topic."
  type        = string
}

variable "rules_file" {
  description = "Prometheus rules file loaded into the workspace (grafana/alerts.yml)."
  type        = string
}

variable "sns_topic_arn" {
  description = "SNS topic the alert manager notifies (the alarms module's topic)."
  type        = string
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
